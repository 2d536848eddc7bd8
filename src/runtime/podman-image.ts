/**
 * The container image the test hosts' Podman runs: the base root filesystem (python3, redis, the shell; without
 * documentation, package caches and the container engines themselves) as one OCI layer, in an OCI archive built
 * once on the machine and cached beside the root filesystem. Every host loads the same archive (streamed into
 * `podman load` over its stdin, as an image would come from a registry), so the image has the same ID on a and b:
 * a Podman checkpoint names its image by ID, and a destination must have exactly that image.
 *
 * `podman import` cannot serve: it stamps the image with the time of the import, so two hosts would get two IDs.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mustRun, removeTree, type RootfsInfo } from './rootfs.ts';

/** The name the image gets in every host's Podman. */
export const PODMAN_TEST_IMAGE = 'localhost/precog-base:latest';
const ARCHIVE = 'precog-base.oci.tar';
const STAMP = 'precog-base.oci.json';
/** Bumped whenever what goes into the image changes: a cached archive of another recipe is rebuilt. */
const RECIPE = 2;

/** Left out of the image: not needed by any workload, and most of the tree's size. */
const EXCLUDE = [
  './usr/share/doc',
  './usr/share/man',
  './usr/share/locale',
  './usr/share/info',
  './var/cache',
  './var/lib/apt',
  './var/lib/dpkg',
  './usr/bin/podman',
  './usr/lib/podman',
  './usr/libexec/podman',
  './usr/bin/crun',
  './usr/sbin/runc',
  './usr/bin/conmon',
  './usr/bin/netavark',
  './usr/bin/aardvark-dns',
  './usr/bin/node',
  './usr/bin/nodejs',
  './usr/share/nodejs',
  './usr/lib/x86_64-linux-gnu/libnode.so*',
  './proc/*',
  './sys/*',
  './dev/*',
  './run/*',
  './tmp/*',
];

export interface PodmanImageArchive {
  path: string;
  /** The image ID Podman gives it (sha256 of its config), the same on every host that loads it. */
  id: string;
  built: boolean;
}

async function sha256File(path: string): Promise<{ hex: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(path)) {
    h.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { hex: h.digest('hex'), size };
}

function writeBlob(blobs: string, body: string): { digest: string; size: number } {
  const hex = createHash('sha256').update(body).digest('hex');
  writeFileSync(join(blobs, hex), body);
  return { digest: `sha256:${hex}`, size: Buffer.byteLength(body) };
}

/** The cached OCI archive of the test image for this root filesystem, built first when missing or stale. */
export async function ensurePodmanImageArchive(
  rootfs: RootfsInfo,
  cache: string,
  log: (line: string) => void = () => {},
): Promise<PodmanImageArchive> {
  const path = join(cache, ARCHIVE);
  const stampFile = join(cache, STAMP);
  if (existsSync(path) && existsSync(stampFile)) {
    try {
      const s = JSON.parse(readFileSync(stampFile, 'utf8')) as {
        rootfsBuiltAt?: string;
        id?: string;
        recipe?: number;
      };
      if (s.rootfsBuiltAt === rootfs.stamp.builtAt && s.recipe === RECIPE && typeof s.id === 'string')
        return { path, id: s.id, built: false };
    } catch {
      // rebuilt below
    }
  }
  const t0 = performance.now();
  log(`building the Podman test image ${PODMAN_TEST_IMAGE} from ${rootfs.dir}`);
  const work = `${path}.partial`;
  await removeTree(work);
  const blobs = join(work, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const layerTmp = join(work, 'layer.tar');
  await mustRun('tar', [
    '-C',
    rootfs.dir,
    '--numeric-owner',
    '--sort=name',
    '--xattrs',
    ...EXCLUDE.map((e) => `--exclude=${e}`),
    '-cf',
    layerTmp,
    '.',
  ]);
  const layer = await sha256File(layerTmp);
  renameSync(layerTmp, join(blobs, layer.hex));
  const config = writeBlob(
    blobs,
    JSON.stringify({
      created: rootfs.stamp.builtAt,
      architecture: 'amd64',
      os: 'linux',
      config: {
        Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG=C.UTF-8'],
        Cmd: ['/bin/sh'],
      },
      rootfs: { type: 'layers', diff_ids: [`sha256:${layer.hex}`] },
      history: [{ created: rootfs.stamp.builtAt, created_by: 'precog: the test hosts root filesystem' }],
    }),
  );
  const manifest = writeBlob(
    blobs,
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: [
        {
          mediaType: 'application/vnd.oci.image.layer.v1.tar',
          digest: `sha256:${layer.hex}`,
          size: layer.size,
        },
      ],
    }),
  );
  writeFileSync(join(work, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(work, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          ...manifest,
          annotations: { 'org.opencontainers.image.ref.name': PODMAN_TEST_IMAGE },
        },
      ],
    }),
  );
  await mustRun('tar', ['-C', work, '-cf', `${path}.tmp`, 'oci-layout', 'index.json', 'blobs']);
  renameSync(`${path}.tmp`, path);
  await removeTree(work);
  const id = config.digest.slice('sha256:'.length);
  writeFileSync(
    stampFile,
    JSON.stringify({ rootfsBuiltAt: rootfs.stamp.builtAt, recipe: RECIPE, id }) + '\n',
  );
  log(`Podman test image built in ${((performance.now() - t0) / 1000).toFixed(1)}s (${layer.size} bytes)`);
  return { path, id, built: true };
}
