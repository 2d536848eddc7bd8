/**
 * CRIU image magic numbers (criu/include/magic.h in CRIU 4.1 and 4.2) under the names `crit` uses for them, and how image
 * files start:
 *
 * - inventory.img: its type magic (INVENTORY) only;
 * - stats-dump, stats-restore, irmap-cache: IMG_SERVICE, then the type magic;
 * - every other protobuf image: IMG_COMMON, then the type magic;
 * - raw images (pages-N.img, tmpfs-*.tar.gz.img, ip/iptables/nftables dumps): no magic at all.
 *
 * All numbers are u32 little-endian, like the entry sizes that follow.
 */

export const IMG_COMMON_MAGIC = 0x54564319;
export const IMG_SERVICE_MAGIC = 0x55105940;

/** Type magic by crit's name. Aliases in magic.h (SHMEM_PAGEMAP = PAGEMAP, PSIGNAL = SIGNAL, ...) share a value. */
export const MAGIC = {
  INVENTORY: 0x58313116,
  PSTREE: 0x50273030,
  FDINFO: 0x56213732,
  PAGEMAP: 0x56084025,
  CORE: 0x55053847,
  IDS: 0x54432030,
  VMAS: 0x54123737,
  PIPES: 0x56513555,
  PIPES_DATA: 0x56453709,
  FIFO: 0x58364939,
  FIFO_DATA: 0x59333054,
  SIGACT: 0x55344201,
  UNIXSK: 0x54373943,
  INETSK: 0x56443851,
  PACKETSK: 0x60454618,
  ITIMERS: 0x57464056,
  POSIX_TIMERS: 0x52603957,
  SK_QUEUES: 0x56264026,
  UTSNS: 0x54473203,
  CREDS: 0x54023547,
  IPC_VAR: 0x53115007,
  IPCNS_SHM: 0x46283044,
  IPCNS_MSG: 0x55453737,
  IPCNS_SEM: 0x59573019,
  REG_FILES: 0x50363636,
  EXT_FILES: 0x59255641,
  FS: 0x51403912,
  MM: 0x57492820,
  REMAP_FPATH: 0x59133954,
  GHOST_FILE: 0x52583605,
  TCP_STREAM: 0x51465506,
  EVENTFD_FILE: 0x44523722,
  EVENTPOLL_FILE: 0x45023858,
  EVENTPOLL_TFD: 0x44433746,
  SIGNALFD: 0x57323820,
  INOTIFY_FILE: 0x48424431,
  INOTIFY_WD: 0x54562009,
  MNTS: 0x55563928,
  NETDEV: 0x57373951,
  NETNS: 0x55933752,
  TTY_FILES: 0x59433025,
  TTY_INFO: 0x59453036,
  TTY_DATA: 0x59413026,
  FILE_LOCKS: 0x54323616,
  RLIMIT: 0x57113925,
  FANOTIFY_FILE: 0x55096122,
  FANOTIFY_MARK: 0x56506035,
  SIGNAL: 0x59255647,
  NETLINK_SK: 0x58005614,
  NS_FILES: 0x61394011,
  TUNFILE: 0x57143751,
  CGROUP: 0x59383330,
  TIMERFD: 0x50493712,
  CPUINFO: 0x61404013,
  USERNS: 0x55474906,
  SECCOMP: 0x64413049,
  BINFMT_MISC: 0x67343323,
  AUTOFS: 0x49353943,
  FILES: 0x56303138,
  MEMFD_INODE: 0x48453499,
  TIMENS: 0x43114433,
  PIDNS: 0x61157326,
  BPFMAP_FILE: 0x57506142,
  BPFMAP_DATA: 0x64324033,
  APPARMOR: 0x59423047,
  PIDFD: 0x54435556,
  STATS: 0x57093306,
  IRMAP_CACHE: 0x57004059,
} as const;

export type ImageType = keyof typeof MAGIC;

const BY_VALUE = new Map<number, ImageType>(
  Object.entries(MAGIC).map(([name, value]) => [value, name as ImageType]),
);

export function imageTypeOfMagic(value: number): ImageType | undefined {
  return BY_VALUE.get(value);
}

export function isImageType(name: string): name is ImageType {
  return Object.hasOwn(MAGIC, name);
}

/** The u32 that precedes the type magic: IMG_SERVICE for service files, none for the inventory, else IMG_COMMON. */
export function headMagicOf(type: ImageType): number | null {
  if (type === 'INVENTORY') return null;
  if (type === 'STATS' || type === 'IRMAP_CACHE') return IMG_SERVICE_MAGIC;
  return IMG_COMMON_MAGIC;
}

/**
 * Images whose entries are followed by extra raw data (pipe buffers, socket queues, IPC segments, ghost file
 * contents, ...): their entry framing depends on the decoded message, so precog keeps them as one raw body.
 */
export const TYPES_WITH_PAYLOAD: ReadonlySet<ImageType> = new Set<ImageType>([
  'PIPES_DATA',
  'FIFO_DATA',
  'SK_QUEUES',
  'IPCNS_SHM',
  'IPCNS_SEM',
  'IPCNS_MSG',
  'GHOST_FILE',
  'TCP_STREAM',
  'BPFMAP_DATA',
]);

/**
 * File names of CRIU images without any magic (raw data): pages-N.img, tmpfs-N.tar.gz.img and tmpfs-dev-N.tar.gz.img,
 * the ip/iptables/nftables dumps of network namespaces, netfilter conntrack/expectation dumps.
 */
export function isRawImageName(name: string): boolean {
  return /^(pages-(shmem-)?-?\d+|tmpfs(-dev)?-\d+\.tar\.gz|ifaddr-\d+|route6?-\d+|rule-\d+|ip6?tables-\d+|nftables-\d+|netns-(ct|exp)-\d+)\.img$/.test(
    name,
  );
}
