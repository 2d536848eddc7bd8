import { readState } from '../../src/runtime/testbed.ts';

/**
 * Why a test that needs the test hosts must skip, or false when it may run: it needs root (CI runs as root), and
 * it leaves alone a testbed that is up already (someone may be using it).
 */
export function testbedSkip(needs: string): string | false {
  if (process.getuid?.() !== 0) return `needs root: ${needs} (CI runs as root)`;
  if (readState() !== undefined) {
    return 'a testbed is up already (someone may be using it); run "precog testbed down" to let this test run';
  }
  return false;
}
