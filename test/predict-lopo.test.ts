import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lopoFolds, programOf } from '../scripts/predict-lopo.ts';

test('predict-lopo: a trace belongs to the program named by its file, whatever its interval', () => {
  assert.equal(programOf('traces/live/gcc.trace.gz'), 'gcc');
  assert.equal(programOf('traces/live/postgres-100ms.trace.gz'), 'postgres');
  assert.equal(programOf('traces/live/postgres-500ms.trace.gz'), 'postgres');
  assert.equal(programOf('/abs/numpy-0.5s.trace'), 'numpy');
  assert.equal(programOf('traces/redis-benchmark.trace.gz'), 'redis');
  assert.equal(programOf('traces/live/redis-100ms.trace.gz'), 'redis');
  // A dash that is not an interval stays part of the name.
  assert.equal(programOf('traces/live/redis-lan-200ms.trace.gz'), 'redis-lan');
});

test('predict-lopo: each program is held out once, with all its intervals, and never in its own training set', () => {
  const files = [
    'traces/live/gcc.trace.gz',
    'traces/live/postgres-100ms.trace.gz',
    'traces/live/postgres-500ms.trace.gz',
    'traces/live/redis-100ms.trace.gz',
    'traces/live/sqlite-500ms.trace.gz',
    'traces/redis-benchmark.trace.gz',
  ];
  const folds = lopoFolds(files);
  assert.deepEqual(
    folds.map((f) => f.program),
    ['gcc', 'postgres', 'redis', 'sqlite'],
  );
  for (const f of folds) {
    assert.ok(f.test.length > 0);
    for (const t of f.train)
      assert.notEqual(programOf(t), f.program, `${t} is in ${f.program}'s training set`);
    assert.deepEqual([...f.test, ...f.train].sort(), [...files].sort());
  }
  assert.deepEqual(folds[1].test, [
    'traces/live/postgres-100ms.trace.gz',
    'traces/live/postgres-500ms.trace.gz',
  ]);
  assert.deepEqual(folds[2].test, ['traces/live/redis-100ms.trace.gz', 'traces/redis-benchmark.trace.gz']);
  assert.deepEqual(folds[2].train, [
    'traces/live/gcc.trace.gz',
    'traces/live/postgres-100ms.trace.gz',
    'traces/live/postgres-500ms.trace.gz',
    'traces/live/sqlite-500ms.trace.gz',
  ]);
  // Every trace is evaluated exactly once.
  assert.deepEqual(folds.flatMap((f) => f.test).sort(), [...files].sort());
});

test('predict-lopo: one program leaves nothing to train on', () => {
  assert.throws(
    () => lopoFolds(['traces/live/postgres-100ms.trace.gz', 'traces/live/postgres-500ms.trace.gz']),
    /at least two programs; got postgres/,
  );
});
