import { readFileSync } from 'node:fs';
import { InputError } from '../util/errors.ts';
import type { Predictor, RoundObservation } from './types.ts';
import { checkWindow, featureCount, featureWords, LocalityWindow, type WindowSpec } from './window.ts';

export const FOREST_FORMAT = 'precog-forest/1';

/** The model shipped with precog (scripts/train-forest.ts writes it). */
export const DEFAULT_FOREST_MODEL = new URL('../../models/forest.json', import.meta.url).pathname;

/**
 * One tree in preorder: node i is a split on feature bit f[i] (>= 0) or a leaf (f[i] = -1) predicting v[i]. A split's
 * bit-0 child is node i + 1, its bit-1 child is node r[i]; r and v are 0 where they do not apply.
 */
export interface TreeJson {
  f: number[];
  r: number[];
  v: number[];
}

/** The trees predicting "dirty within `horizon` rounds". */
export interface HorizonForest {
  horizon: number;
  trees: TreeJson[];
}

/** A trained forest as stored in a model file (JSON; docs/predictors.md). */
export interface ForestModel {
  format: typeof FOREST_FORMAT;
  window: WindowSpec;
  forests: HorizonForest[];
  /** How it was trained: the command's options and data, for the record. */
  training?: Record<string, unknown>;
}

/** Checks a parsed model file; throws InputError naming what is wrong. */
export function validateForestModel(obj: unknown, source: string): ForestModel {
  const fail = (why: string): never => {
    throw new InputError(`forest model ${source}: ${why} (see docs/predictors.md; precog train writes one)`);
  };
  if (!obj || typeof obj !== 'object') fail('not a JSON object');
  const m = obj as Partial<ForestModel>;
  if (m.format !== FOREST_FORMAT) fail(`format is ${JSON.stringify(m.format)}, expected "${FOREST_FORMAT}"`);
  const w = m.window as WindowSpec | undefined;
  if (!w || typeof w !== 'object') fail('window {m, n, l} is missing');
  const bad = checkWindow(w!);
  if (bad) fail(`window ${bad}`);
  const F = featureCount(w!);
  if (!Array.isArray(m.forests) || m.forests.length === 0) fail('forests is missing or empty');
  const horizons = new Set<number>();
  for (const hf of m.forests!) {
    if (!Number.isInteger(hf?.horizon) || hf.horizon < 1)
      fail('a forest has no horizon (a whole number >= 1)');
    if (horizons.has(hf.horizon)) fail(`two forests for horizon ${hf.horizon}`);
    horizons.add(hf.horizon);
    if (!Array.isArray(hf.trees) || hf.trees.length === 0)
      fail(`the forest for horizon ${hf.horizon} has no trees`);
    hf.trees.forEach((t, ti) => {
      const where = `horizon ${hf.horizon} tree ${ti}`;
      if (!Array.isArray(t?.f) || !Array.isArray(t.r) || !Array.isArray(t.v))
        fail(`${where} needs arrays f, r and v`);
      const n = t.f.length;
      if (n === 0 || t.r.length !== n || t.v.length !== n)
        fail(`${where}: f, r and v must have the same length > 0`);
      // Every node must be reached exactly once from the root in preorder, so a walk cannot loop or run off.
      let next = 0;
      const visit = (i: number, depth: number): void => {
        if (i !== next || i >= n || depth > 64) fail(`${where}: nodes are not a tree in preorder`);
        next++;
        const f = t.f[i];
        if (f === -1) {
          if (!(t.v[i] >= 0 && t.v[i] <= 1)) fail(`${where}: leaf ${i} value ${t.v[i]} is not in [0, 1]`);
          return;
        }
        if (!Number.isInteger(f) || f < 0 || f >= F)
          fail(`${where}: node ${i} splits on feature ${f}, not 0..${F - 1}`);
        visit(i + 1, depth + 1);
        visit(t.r[i], depth + 1);
      };
      visit(0, 0);
      if (next !== n) fail(`${where}: ${n - next} nodes are unreachable`);
    });
  }
  return m as ForestModel;
}

const loaded = new Map<string, ForestModel>();

/** Reads and checks a model file (cached per path). */
export function loadForestModel(path: string): ForestModel {
  const hit = loaded.get(path);
  if (hit) return hit;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new InputError(
      `cannot read forest model ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}; train one with precog train --model forest --out FILE`,
    );
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new InputError(`forest model ${path} is not valid JSON: ${(e as Error).message}`);
  }
  const model = validateForestModel(obj, path);
  loaded.set(path, model);
  return model;
}

/** A forest in typed arrays: all trees' nodes back to back. */
export class CompiledForest {
  readonly horizon: number;
  readonly trees: number;
  private readonly roots: Int32Array;
  private readonly feature: Int16Array;
  private readonly right: Int32Array;
  private readonly value: Float32Array;

  constructor(f: HorizonForest) {
    this.horizon = f.horizon;
    this.trees = f.trees.length;
    const total = f.trees.reduce((a, t) => a + t.f.length, 0);
    this.roots = new Int32Array(this.trees);
    this.feature = new Int16Array(total);
    this.right = new Int32Array(total);
    this.value = new Float32Array(total);
    let at = 0;
    f.trees.forEach((t, ti) => {
      this.roots[ti] = at;
      for (let i = 0; i < t.f.length; i++) {
        this.feature[at + i] = t.f[i];
        this.right[at + i] = t.f[i] >= 0 ? at + t.r[i] : 0;
        this.value[at + i] = t.v[i];
      }
      at += t.f.length;
    });
  }

  /** Mean leaf value over the trees for one page's feature words (hi is 0 for one-word features). */
  evaluate(lo: number, hi: number): number {
    const feature = this.feature;
    const right = this.right;
    let sum = 0;
    if (hi === 0) {
      // Every bit at 32 or above is 0: one word to test.
      for (let t = 0; t < this.trees; t++) {
        let i = this.roots[t];
        let f = feature[i];
        while (f >= 0) {
          i = f < 32 && (lo >>> f) & 1 ? right[i] : i + 1;
          f = feature[i];
        }
        sum += this.value[i];
      }
      return sum / this.trees;
    }
    for (let t = 0; t < this.trees; t++) {
      let i = this.roots[t];
      let f = feature[i];
      while (f >= 0) {
        const w = f < 32 ? lo : hi;
        i = (w >>> (f & 31)) & 1 ? right[i] : i + 1;
        f = feature[i];
      }
      sum += this.value[i];
    }
    return sum / this.trees;
  }
}

const CACHE_BITS = 18;

/**
 * Predictions by feature words, direct-mapped: most pages of a round share a few thousand distinct windows (all
 * clean above all), so a page usually costs one lookup instead of a walk through every tree. The model and the
 * features are fixed, so entries stay valid for the predictor's life.
 */
class PredictionCache {
  private readonly lo = new Uint32Array(1 << CACHE_BITS);
  private readonly hi = new Uint32Array(1 << CACHE_BITS);
  private readonly value = new Float32Array(1 << CACHE_BITS).fill(-1);
  private readonly forest: CompiledForest;

  constructor(forest: CompiledForest) {
    this.forest = forest;
  }

  get(lo: number, hi: number): number {
    const slot = Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b) >>> (32 - CACHE_BITS);
    const v = this.value[slot];
    if (v >= 0 && this.lo[slot] === lo && this.hi[slot] === hi) return v;
    const x = this.forest.evaluate(lo, hi);
    this.lo[slot] = lo;
    this.hi[slot] = hi;
    this.value[slot] = x;
    return x;
  }
}

/**
 * Random forest over the locality window (MBDPC). The model holds one forest per trained horizon; a horizon it was
 * not trained for uses the largest trained one below it (or the smallest) with p' = 1 - (1 - p)^(h / h0).
 */
export class ForestPredictor implements Predictor {
  readonly name = 'forest';
  readonly pageCount: number;
  readonly model: ForestModel;
  private readonly window: LocalityWindow;
  private readonly words: Uint32Array;
  private readonly forests: CompiledForest[];
  private readonly caches = new Map<number, PredictionCache>();

  constructor(pageCount: number, model: ForestModel) {
    this.pageCount = pageCount;
    this.model = model;
    this.window = new LocalityWindow(pageCount, model.window);
    this.words = new Uint32Array(pageCount * featureWords(model.window));
    this.forests = model.forests.map((f) => new CompiledForest(f)).sort((a, b) => a.horizon - b.horizon);
  }

  observe(o: RoundObservation): void {
    this.window.observe(o.dirty.words);
  }

  private forestFor(horizon: number): CompiledForest {
    let best = this.forests[0];
    for (const f of this.forests) if (f.horizon <= horizon) best = f;
    return best;
  }

  predict(out: Float32Array, horizon = 1): void {
    if (this.window.rounds === 0) {
      out.fill(0, 0, this.pageCount);
      return;
    }
    const forest = this.forestFor(horizon);
    let cache = this.caches.get(forest.horizon);
    if (!cache) this.caches.set(forest.horizon, (cache = new PredictionCache(forest)));
    const words = this.words;
    this.window.features(words);
    const N = this.pageCount;
    if (this.window.words === 1) {
      // Runs of pages with the same window (clean memory above all) cost a comparison each.
      let prev = -1;
      let v = 0;
      for (let p = 0; p < N; p++) {
        const w = words[p];
        if (w !== prev) {
          v = cache.get(w, 0);
          prev = w;
        }
        out[p] = v;
      }
    } else {
      let lo = -1;
      let hi = -1;
      let v = 0;
      for (let p = 0; p < N; p++) {
        if (words[2 * p] !== lo || words[2 * p + 1] !== hi) {
          lo = words[2 * p];
          hi = words[2 * p + 1];
          v = cache.get(lo, hi);
        }
        out[p] = v;
      }
    }
    if (forest.horizon !== horizon) {
      const e = horizon / forest.horizon;
      for (let p = 0; p < N; p++) out[p] = 1 - Math.pow(1 - out[p], e);
    }
  }
}
