/** The runtimes precog ships, registered by name (src/runtime/registry.ts). Import this to have them. */
import { NamespaceRuntime } from './container.ts';
import { RUNTIME_NAMES, type RuntimeName } from './names.ts';
import { OciRuntime } from './oci.ts';
import { PodmanRuntime } from './podman.ts';
import { registerRuntime, type RuntimeFactory } from './registry.ts';

const SHIPPED: Record<RuntimeName, { describe: string; factory: RuntimeFactory }> = {
  precog: {
    describe:
      "precog's own containers (precog run): namespaces, an overlay root and cgroups, checkpointed with CRIU",
    factory: (site) => new NamespaceRuntime(site ? () => [site] : undefined),
  },
  podman: {
    describe:
      'Podman containers by name or ID, moved through podman container checkpoint/restore (lazy restore and post-copy through a CRIU configuration file)',
    factory: (site) => new PodmanRuntime(site),
  },
  runc: {
    describe:
      'containers run by runc from an OCI bundle, moved with their bundle through runc checkpoint/restore (lazy too)',
    factory: (site) => new OciRuntime('runc', site),
  },
  crun: {
    describe:
      'containers run by crun from an OCI bundle, moved with their bundle through crun checkpoint/restore (full restore)',
    factory: (site) => new OciRuntime('crun', site),
  },
};

// In the order of RUNTIME_NAMES, which help texts list without importing this module.
for (const name of RUNTIME_NAMES) registerRuntime(name, SHIPPED[name].describe, SHIPPED[name].factory);

export { makeRuntime, runtimeNames, type MovableRuntime } from './registry.ts';
