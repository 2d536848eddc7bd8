import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseBandwidth, parseDuration, parseRate, parseSize } from '../src/util/units.ts';
import { Bitmap } from '../src/util/bitmap.ts';

test('sizes: binary and decimal units', () => {
  assert.equal(parseSize('512MiB'), 512 * 2 ** 20);
  assert.equal(parseSize('1GiB'), 2 ** 30);
  assert.equal(parseSize('1.5GB'), 1.5e9);
  assert.equal(parseSize('64K'), 65536);
  assert.equal(parseSize('4096'), 4096);
  assert.throws(() => parseSize('12XB'), /unknown unit "XB"; accepted: .*MiB/);
  assert.throws(() => parseSize('lots'), /not a number with a unit/);
});

test('bandwidths, rates and durations', () => {
  assert.equal(parseBandwidth('100Mbit'), 1e8);
  assert.equal(parseBandwidth('1Gbit'), 1e9);
  assert.equal(parseBandwidth('12.5MB/s'), 1e8);
  // As users type them: Mbps and Gbps are bits (network equipment's units), MBps bytes.
  assert.equal(parseBandwidth('100Mbps'), 1e8);
  assert.equal(parseBandwidth('1Gbps'), 1e9);
  assert.equal(parseBandwidth('100mbit/s'), 1e8);
  assert.equal(parseBandwidth('12.5MBps'), 1e8);
  assert.throws(() => parseBandwidth('0'), /greater than zero/);
  assert.throws(() => parseBandwidth('5furlongs'), /unknown unit/);
  assert.equal(parseRate('12MB/s'), 12e6);
  assert.equal(parseDuration('300ms'), 0.3);
  assert.equal(parseDuration('2m'), 120);
});

test('bitmap set operations and iteration', () => {
  const a = Bitmap.from(100, [0, 31, 32, 99]);
  const b = Bitmap.from(100, [31, 50]);
  assert.equal(a.count(), 4);
  assert.deepEqual([...a.clone().or(b).toArray()], [0, 31, 32, 50, 99]);
  assert.deepEqual([...a.clone().andNot(b).toArray()], [0, 32, 99]);
  assert.deepEqual([...a.clone().and(b).toArray()], [31]);
  assert.equal(Bitmap.full(100).count(), 100);
  assert.ok(new Bitmap(70).isEmpty());
});
