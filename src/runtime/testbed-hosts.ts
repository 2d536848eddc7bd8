/**
 * The test hosts' names and addresses and their link's fixed parameters: a module of its own so that help texts name
 * them without loading the testbed (src/runtime/testbed.ts).
 */
export const NAME_PREFIX = 'precog-';
/**
 * The tbf parameters of the link: burst 32kbit, latency 50ms (ENVIRONMENT.md: 95.6 Mbit/s measured at rate 100mbit).
 * Above 128mbit the burst grows to a quarter millisecond of traffic: with 32kbit, rate 1gbit gave only 582 Mbit/s
 * here (timer granularity), with 245kbit it gives about 925 Mbit/s.
 */
export const TBF_BURST = '32kbit';
export const TBF_LATENCY = '50ms';

export interface HostSpec {
  /** "a" or "b": host name, hostname inside, and the suffix of every name the host owns. */
  name: string;
  netns: string;
  /** The host's end of the veth pair (inside its network namespace). */
  iface: string;
  address: string;
  prefixLength: number;
}

export const HOSTS: readonly HostSpec[] = [
  { name: 'a', netns: `${NAME_PREFIX}a`, iface: 'eth0', address: '10.213.77.1', prefixLength: 24 },
  { name: 'b', netns: `${NAME_PREFIX}b`, iface: 'eth0', address: '10.213.77.2', prefixLength: 24 },
];
