import { UsageError } from '../util/errors.ts';
import { Bitmap } from '../util/bitmap.ts';
import { createPredictor } from '../predict/index.ts';
import type { PredictorFactory } from './selector.ts';

/**
 * The predictor factory behind a predictive strategy, from a predictor spec ("forest", "markov:prior=2"). The
 * oracle gets the emulator's lookahead: a round reaches as far as the selector expects the round to last.
 */
export function predictorFactory(spec: string): PredictorFactory {
  return (env, window) => {
    const look = env.lookahead;
    return createPredictor(spec, env.pageCount, {
      window,
      ...(look
        ? { lookahead: (_round: number, horizon: number) => look.written(horizon * window.seconds) }
        : {}),
    });
  };
}

/**
 * Checks a predictor spec when the strategy is parsed (so that a typo fails before a long run): builds the
 * predictor for one page. The oracle is given an empty future here; it gets the real one in the emulator.
 */
export function checkPredictor(spec: string, strategy: string, own: readonly string[]): void {
  try {
    createPredictor(spec, 1, { lookahead: () => new Bitmap(1) });
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    throw new UsageError(
      `strategy ${strategy}: ${e.message}; the strategy's own parameters: ${own.join(', ')}`,
    );
  }
}
