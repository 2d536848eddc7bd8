/** The runtimes precog ships, registered by name (src/runtime/registry.ts). Import this to have them. */
import { NamespaceRuntime } from './container.ts';
import { OciRuntime } from './oci.ts';
import { PodmanRuntime } from './podman.ts';
import { registerRuntime } from './registry.ts';

registerRuntime(
  'precog',
  "precog's own containers (precog run): namespaces, an overlay root and cgroups, checkpointed with CRIU",
  (site) => new NamespaceRuntime(site ? () => [site] : undefined),
);

registerRuntime(
  'podman',
  'Podman containers by name or ID, moved through podman container checkpoint/restore (lazy restore and post-copy through a CRIU configuration file)',
  (site) => new PodmanRuntime(site),
);

registerRuntime(
  'runc',
  'containers run by runc from an OCI bundle, moved with their bundle through runc checkpoint/restore (lazy too)',
  (site) => new OciRuntime('runc', site),
);

registerRuntime(
  'crun',
  'containers run by crun from an OCI bundle, moved with their bundle through crun checkpoint/restore (full restore)',
  (site) => new OciRuntime('crun', site),
);

export { makeRuntime, runtimeNames, type MovableRuntime } from './registry.ts';
