import { OCI_TEST_CGROUP_PARENT } from '../../src/runtime/testbed.ts';

/**
 * A shell script (for `sh` in a test host) that makes an OCI bundle /var/lib/bundles/NAME the way a runc user does
 * (`runc spec`, then edits) and runs it detached: a small root filesystem of its own (writable: the container's
 * state), the host's /usr and precog's workloads bound read-only, plus READONLY / READWRITE host directories bound
 * at the same path. Its cgroups go under OCI_TEST_CGROUP_PARENT (removed by `testbed down`).
 */
export function bundleScript(
  name: string,
  args: string[],
  o: { readOnly?: string[]; readWrite?: string[] } = {},
): string {
  const binds = [
    ...['/usr', '/opt/precog/workloads', ...(o.readOnly ?? [])].map((p) => ({ p, ro: true })),
    ...(o.readWrite ?? []).map((p) => ({ p, ro: false })),
  ];
  const edit = {
    args,
    binds: binds.map(({ p, ro }) => ({
      destination: p,
      type: 'bind',
      source: p,
      options: ro ? ['rbind', 'ro'] : ['rbind', 'rw'],
    })),
    cgroupsPath: `/${OCI_TEST_CGROUP_PARENT}/${name}`,
  };
  return `set -eu
b=/var/lib/bundles/${name}
rm -rf "$b"
mkdir -p "$b/rootfs"
cd "$b/rootfs"
mkdir -p etc tmp proc sys dev run var/tmp ${binds.map(({ p }) => `'.${p}'`).join(' ')}
for l in bin sbin lib lib64; do ln -s usr/$l $l; done
echo 'root:x:0:0:root:/root:/bin/sh' >etc/passwd
echo 'root:x:0:' >etc/group
cd "$b"
runc spec
python3 - <<'EOF'
import json
e = json.loads(${JSON.stringify(JSON.stringify(edit))})
c = json.load(open('config.json'))
c['process']['terminal'] = False
c['process']['args'] = e['args']
c['root'] = {'path': 'rootfs', 'readonly': False}
c['mounts'] += e['binds']
c['linux']['cgroupsPath'] = e['cgroupsPath']
json.dump(c, open('config.json', 'w'), indent=1)
EOF
runc run --detach ${name} </dev/null >/dev/null 2>&1
`;
}
