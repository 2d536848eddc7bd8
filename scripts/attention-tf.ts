/**
 * The attention model of src/predict/attention.ts as a tfjs graph, for training (scripts/train-attention.ts) and for
 * checking precog's own forward pass against tfjs (test/predict-u2c.test.ts). Development only: precog itself runs
 * the model in plain TypeScript.
 */
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import {
  ATTENTION_FORMAT,
  STEP_INPUTS,
  weightShapes,
  type AttentionModel,
  type AttentionWeights,
} from '../src/predict/attention.ts';
import { SYSTEM_FEATURES } from '../src/predict/features.ts';

export { tf };

let ready: Promise<string> | null = null;

/** Selects the wasm backend (the cpu backend when wasm cannot start); returns the backend's name. */
export function tfReady(): Promise<string> {
  ready ??= (async () => {
    try {
      if (!(await tf.setBackend('wasm'))) throw new Error('wasm backend refused');
    } catch {
      await tf.setBackend('cpu');
    }
    await tf.ready();
    return tf.getBackend();
  })();
  return ready;
}

export interface Shape {
  m: number;
  longEdges: number[];
  d: number;
  hidden: number;
  horizons: number[];
}

export type TfWeights = Record<keyof AttentionWeights, tf.Variable>;

/** Fresh weights: Glorot-uniform matrices, zero biases, small positional embeddings. */
export function initWeights(s: Shape, seed: number): TfWeights {
  const shapes = weightShapes(s.m, s.d, s.hidden, s.horizons.length, s.longEdges.length);
  const out: Partial<TfWeights> = {};
  let k = seed;
  for (const [name, [r, c]] of Object.entries(shapes) as [keyof AttentionWeights, [number, number]][]) {
    let init: tf.Tensor;
    if (name === 'be' || name === 'b1' || name === 'b2') init = tf.zeros([r, c]);
    else if (name === 'pos') init = tf.randomUniform([r, c], -0.1, 0.1, 'float32', k++);
    else {
      const lim = Math.sqrt(6 / (r + c));
      init = tf.randomUniform([r, c], -lim, lim, 'float32', k++);
    }
    out[name] = tf.variable(init, true, name);
  }
  return out as TfWeights;
}

/** Weights of a model file as tfjs variables. */
export function weightsFromModel(model: AttentionModel): TfWeights {
  const shapes = weightShapes(model.m, model.d, model.hidden, model.horizons.length, model.longEdges.length);
  const out: Partial<TfWeights> = {};
  for (const [name, shape] of Object.entries(shapes) as [keyof AttentionWeights, [number, number]][])
    out[name] = tf.variable(tf.tensor2d(model.weights[name], shape), false, `${name}_${Math.random()}`);
  return out as TfWeights;
}

/**
 * The forward pass: x is [B, m, STEP_INPUTS] (oldest step first), long the one-hot long-term classes [B, L];
 * returns logits [B, K] (sigmoid gives the probabilities). Same definition as the comment on AttentionModel.
 */
export function forwardLogits(w: TfWeights, x: tf.Tensor3D, long: tf.Tensor2D, s: Shape): tf.Tensor2D {
  const { m, d } = s;
  const B = x.shape[0];
  const flat = tf.reshape(x, [B * m, STEP_INPUTS]);
  const pre = tf.add(
    tf.reshape(tf.matMul(flat, w.We), [B, m, d]),
    tf.add(tf.reshape(w.be, [1, 1, d]), tf.reshape(w.pos, [1, m, d])),
  );
  const h = tf.tanh(pre);
  const hl = tf.reshape(tf.slice(h, [0, m - 1, 0], [B, 1, d]), [B, d]);
  const hf = tf.reshape(h, [B * m, d]);
  const k = tf.reshape(tf.matMul(hf, w.Wk), [B, m, d]);
  const v = tf.reshape(tf.matMul(hf, w.Wv), [B, m, d]);
  const q = tf.matMul(hl, w.Wq);
  const scores = tf.mul(tf.sum(tf.mul(k, tf.reshape(q, [B, 1, d])), 2), 1 / Math.sqrt(d));
  const a = tf.softmax(scores);
  const c = tf.sum(tf.mul(v, tf.reshape(a, [B, m, 1])), 1);
  const z = tf.relu(tf.add(tf.matMul(tf.concat([c, hl, long], 1), w.W1), w.b1));
  return tf.add(tf.matMul(z, w.W2), w.b2) as tf.Tensor2D;
}

/** Probabilities [B, K] for inputs [B, m, STEP_INPUTS] given as a flat array and long-term classes [B]. */
export function tfPredict(
  model: AttentionModel,
  inputs: Float32Array,
  long: Int32Array,
  batch: number,
): Float32Array {
  return tf.tidy(() => {
    const w = weightsFromModel(model);
    const x = tf.tensor3d(inputs, [batch, model.m, STEP_INPUTS]);
    const l = tf.cast(
      tf.oneHot(tf.tensor1d(long, 'int32'), model.longEdges.length),
      'float32',
    ) as tf.Tensor2D;
    const y = tf.sigmoid(forwardLogits(w, x, l, model)).dataSync() as Float32Array;
    for (const v of Object.values(w)) v.dispose();
    return y;
  });
}

/** The model file of trained weights (values rounded to 6 significant digits). */
export function toModel(
  w: TfWeights,
  s: Shape,
  accessed: boolean,
  training: Record<string, unknown>,
): AttentionModel {
  const weights = {} as AttentionWeights;
  for (const [name, v] of Object.entries(w) as [keyof AttentionWeights, tf.Variable][])
    weights[name] = Array.from(v.dataSync(), (x) => Number(x.toPrecision(6)));
  return {
    format: ATTENTION_FORMAT,
    m: s.m,
    longEdges: s.longEdges,
    d: s.d,
    hidden: s.hidden,
    horizons: s.horizons,
    accessed,
    features: [...SYSTEM_FEATURES],
    weights,
    training,
  };
}
