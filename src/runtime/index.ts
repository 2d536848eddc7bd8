/** The runtimes precog ships, registered by name (src/runtime/registry.ts). Import this to have them. */
import { NamespaceRuntime } from './container.ts';
import { PodmanRuntime } from './podman.ts';
import { registerRuntime } from './registry.ts';

registerRuntime(
  'precog',
  "precog's own containers (precog run): namespaces, an overlay root and cgroups, checkpointed with CRIU",
  (site) => new NamespaceRuntime(site ? () => [site] : undefined),
);

registerRuntime(
  'podman',
  'Podman containers by name or ID, moved through podman container checkpoint/restore (full restore, no post-copy)',
  (site) => new PodmanRuntime(site),
);

export { makeRuntime, runtimeNames, type MovableRuntime } from './registry.ts';
