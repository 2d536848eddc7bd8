import { after, before } from 'node:test';
import { readState, testbedDown, testbedUp, type TestbedState } from '../../src/runtime/testbed.ts';
import { precog } from './cli.ts';
import { ps } from './containers.ts';

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

/**
 * One set of test hosts for the tests of the enclosing describe block (one per test file): up before them, then
 * SETUP with its state (containers the tests share); after them, precog's containers stopped and the hosts down.
 * Only a testbed this block brought up is taken down (an up that fails removes what it made itself).
 */
export function sharedTestbed(
  options: Parameters<typeof testbedUp>[0],
  setup: (state: TestbedState) => void | Promise<void> = () => {},
): void {
  let up = false;
  before(async () => {
    const { state } = await testbedUp(options);
    up = true;
    await setup(state);
  });
  after(async () => {
    if (!up) return;
    try {
      for (const c of ps()) precog(['stop', c.name]);
    } finally {
      await testbedDown();
    }
  });
}
