/**
 * Shell completion scripts made from commander's command tree: for each command path (`precog`, `precog pki`,
 * `precog pki issue`, ...) its visible subcommands and long options, as `--help` shows them. The script is static:
 * a TAB runs no precog.
 */
import type { Command } from 'commander';

/** One command of the tree: its words from the root, and what may follow it. */
interface Node {
  path: string;
  commands: { name: string; about: string }[];
  options: string[];
}

export function commandTree(root: Command): Node[] {
  const nodes: Node[] = [];
  const walk = (cmd: Command, path: string, parent: Node | null): void => {
    const help = cmd.createHelp();
    const subs = help.visibleCommands(cmd);
    const node: Node = {
      path,
      commands: subs.map((c) => ({ name: c.name(), about: help.subcommandDescription(c) })),
      options: help
        .visibleOptions(cmd)
        .map((o) => o.long)
        .filter((l): l is string => !!l),
    };
    // `precog help CMD` takes the commands beside it.
    if (parent && cmd.name() === 'help') node.commands = parent.commands.filter((c) => c.name !== 'help');
    nodes.push(node);
    for (const c of subs) walk(c, `${path} ${c.name()}`, node);
  };
  walk(root, root.name(), null);
  return nodes;
}

/** TEXT in single quotes for bash and zsh. */
const quote = (text: string): string => `'${text.replaceAll("'", `'\\''`)}'`;

function bashScript(name: string, nodes: Node[]): string {
  const fn = `_${name.replace(/\W/g, '_')}`;
  const table = (pick: (n: Node) => string[]) =>
    nodes
      .filter((n) => pick(n).length > 0)
      .map((n) => `    ${quote(n.path)}) REPLY=${quote(pick(n).join(' '))} ;;`)
      .join('\n');
  return `# bash completion for ${name}, made by \`${name} completion bash\` from its command tree.
# Load it with: source <(${name} completion bash)   (or save it as /etc/bash_completion.d/${name})
${fn}_commands() {
  case $1 in
${table((n) => n.commands.map((c) => c.name))}
    *) REPLY='' ;;
  esac
}
${fn}_options() {
  case $1 in
${table((n) => n.options)}
    *) REPLY='' ;;
  esac
}
${fn}() {
  local cur=\${COMP_WORDS[COMP_CWORD]} path=${name} word i REPLY
  # The command path: the words before the cursor that name a subcommand of the path so far.
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=\${COMP_WORDS[i]}
    [[ $word == -- ]] && break
    ${fn}_commands "$path"
    [[ " $REPLY " == *" $word "* ]] && path="$path $word"
  done
  if [[ $cur == -* ]]; then ${fn}_options "$path"; else ${fn}_commands "$path"; fi
  # Nothing to offer (an argument): bash completes file names (-o default).
  COMPREPLY=($(compgen -W "$REPLY" -- "$cur"))
}
complete -o default -F ${fn} ${name}
`;
}

function zshScript(name: string, nodes: Node[]): string {
  const fn = `_${name.replace(/\W/g, '_')}`;
  const entries = (pick: (n: Node) => string[]) =>
    nodes
      .filter((n) => pick(n).length > 0)
      .map((n) => `    ${quote(n.path)} ${quote(pick(n).join('\n'))}`)
      .join('\n');
  return `#compdef ${name}
# zsh completion for ${name}, made by \`${name} completion zsh\` from its command tree.
# Load it with: source <(${name} completion zsh) after compinit, or save it as ${fn} in a directory of $fpath.
${fn}() {
  local -A commands options
  commands=(
${entries((n) => n.commands.map((c) => `${c.name}:${c.about.split('\n')[0]}`))}
  )
  options=(
${entries((n) => n.options)}
  )
  local cmdpath=${name} word i
  local -a subs
  # The command path: the words before the cursor that name a subcommand of the path so far.
  for ((i = 2; i < CURRENT; i++)); do
    word=\${words[i]}
    [[ $word == -- ]] && break
    subs=(\${\${(f)commands[$cmdpath]}%%:*})
    (( \${subs[(Ie)$word]} )) && cmdpath="$cmdpath $word"
  done
  if [[ \${words[CURRENT]} == -* ]]; then
    compadd -- \${(f)options[$cmdpath]}
  elif [[ -n \${commands[$cmdpath]} ]]; then
    subs=(\${(f)commands[$cmdpath]})
    _describe -t commands command subs
  else
    _files
  fi
}
if [[ \${zsh_eval_context[-1]} == loadautofunc ]]; then ${fn} "$@"; else compdef ${fn} ${name}; fi
`;
}

/** The completion script of ROOT's tree for SHELL. */
export function completionScript(root: Command, shell: 'bash' | 'zsh'): string {
  const nodes = commandTree(root);
  return shell === 'bash' ? bashScript(root.name(), nodes) : zshScript(root.name(), nodes);
}

/** `precog completion SHELL`: the script of the tree this command belongs to. */
export function completion(shell: 'bash' | 'zsh', _flags: unknown, cmd: Command): void {
  let root = cmd;
  while (root.parent) root = root.parent;
  process.stdout.write(completionScript(root, shell));
}
