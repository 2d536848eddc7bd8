import { Command, Option } from 'commander';
import { TRAIN_DEFAULTS } from '../predict/forest-train.ts';
import { WINDOW_DEFAULTS } from '../predict/window.ts';
import { lazy } from './lazy.ts';
import { jsonOption } from './json.ts';

export function trainCommand(): Command {
  return (
    new Command('train')
      .exitOverride()
      .showHelpAfterError('(run precog train --help for usage)')
      .description('train a dirty-page prediction model offline on recorded or emulated traces')
      .option(
        '-t, --traces <paths...>',
        'trace files, or directories of them (*.trace[.gz], public *.json[.gz])',
      )
      // --kind: what to train; --model names a model file everywhere (predict-eval), so here it is only a hidden alias.
      .addOption(new Option('--kind <kind>', 'the model to train').choices(['forest']).default('forest'))
      .addOption(new Option('--model <kind>', 'the same as --kind').choices(['forest']).hideHelp())
      .option('-o, --out <file>', 'the model file to write (JSON)')
      .option('--trees <n>', 'trees per horizon', String(TRAIN_DEFAULTS.trees))
      .option('--depth <n>', 'maximum tree depth', String(TRAIN_DEFAULTS.depth))
      .option('--m <rounds>', 'rounds of history per page in the window', String(WINDOW_DEFAULTS.m))
      .option('--n <pages>', 'pages in the window, centred on the page (odd)', String(WINDOW_DEFAULTS.n))
      .option(
        '--l <rounds>',
        'rounds of the longer history (share of dirty rounds)',
        String(WINDOW_DEFAULTS.l),
      )
      .option(
        '--horizons <list>',
        'horizons (rounds) to train a forest for',
        TRAIN_DEFAULTS.horizons.join(','),
      )
      .option('--min-leaf <rows>', 'minimum weight on each side of a split', String(TRAIN_DEFAULTS.minLeaf))
      .option('--seed <n>', 'seed of the bootstrap and feature sampling', String(TRAIN_DEFAULTS.seed))
      .addOption(jsonOption('the summary'))
      .action(lazy(() => import('./actions/predict.ts').then((m) => m.train)))
  );
}

export function predictEvalCommand(): Command {
  return new Command('predict-eval')
    .exitOverride()
    .showHelpAfterError('(run precog predict-eval --help for usage)')
    .description(
      'replay traces through dirty-page predictors: observe sample t, predict t+1..t+horizon; AUC, precision, recall, F1, speed',
    )
    .option('-t, --traces <files...>', 'trace files (precog format or the public JSON, gzipped or not)')
    .addOption(new Option('--trace <files...>', 'the same as --traces').hideHelp())
    .option(
      '-p, --predictors <list>',
      'comma-separated predictor specs: markov[:prior=1], pr[:p=0.5:r=0.5:half-life=1], forest[:model=FILE], datashift[:window=2:p=0.5], tempo[:decay=0.5:min-run=64:margin=0.25], learn[:decay=0.95:cap=64:sample=512:rate=0.0005], recent[:window=5] (the baseline), oracle',
      'markov,pr,forest,datashift,oracle',
    )
    .option('--horizon <rounds>', 'a page is positive when dirty within this many samples', '1')
    .option('--threshold <p>', 'scores at or above it count as predicted dirty', '0.5')
    .option('--warmup <samples>', 'samples observed before the first scored prediction', '1')
    .option('--model <file>', 'forest model file (default: models/forest.json, shipped with precog)')
    .addOption(new Option('--format <f>', 'table format').choices(['text', 'markdown']).default('text'))
    .addOption(jsonOption('the results'))
    .action(lazy(() => import('./actions/predict.ts').then((m) => m.predictEval)));
}
