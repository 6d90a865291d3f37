//! Reads a shell command line the way a POSIX shell on the server would split it, far enough to
//! name the programs it runs and the files it redirects, and no further.
//!
//! Why a small reader of our own rather than a full shell parser: the question policy asks is
//! not "what does this line mean in bash" but "can the gateway be sure which programs run". A
//! full parser would still not know the server's aliases, functions or `$PATH`, and everything
//! it can parse but we cannot judge (command substitution, `eval`, variables in command
//! position, here-documents, subshells, globs in command position) must be refused anyway. So
//! this reader accepts a strict subset (words, quotes, escapes, `|`, `;`, `&&`, `||`, `&`,
//! redirections) and marks everything else opaque, which the default policy denies.
//!
//! It lives with the command model, not under one protocol, because more than one protocol
//! carries command lines: SSH `exec` requests, and Kubernetes `exec` into a container.
//!
//! Wrappers that run another program (`sudo`, `env`, `timeout`, `xargs`, `find -exec`, `sh -c`)
//! name both: the wrapper and what it runs, read again for `sh -c '…'`.

use super::CommandLine;

/// Programs that run the program named after their own options (option arity: the options
/// that take a separate argument).
const WRAPPERS: &[(&str, &[&str])] = &[
    (
        "sudo",
        &["-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T"],
    ),
    ("doas", &["-u", "-C"]),
    ("env", &["-u", "--unset", "-C", "--chdir"]),
    ("nice", &["-n", "--adjustment"]),
    ("nohup", &[]),
    ("time", &["-f", "--format", "-o", "--output"]),
    ("timeout", &["-s", "--signal", "-k", "--kill-after"]),
    ("exec", &["-a"]),
    ("command", &[]),
    ("builtin", &[]),
    ("stdbuf", &["-i", "-o", "-e"]),
    ("setsid", &[]),
    ("ionice", &["-c", "-n", "-p"]),
    ("chrt", &[]),
    (
        "xargs",
        &[
            "-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "-e", "-i", "-l",
        ],
    ),
    ("strace", &["-e", "-o", "-p", "-s", "-u"]),
    ("watch", &["-n", "--interval", "-d"]),
];

/// Shells whose `-c STRING` is read again as a command line.
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"];

/// Builtins that run text the line does not show.
const OPAQUE_BUILTINS: &[&str] = &["eval", "source", ".", "trap", "alias", "function"];

/// How deep `sh -c 'sh -c …'` is read before the line is called opaque.
const MAX_DEPTH: usize = 4;

/// Reads `line`. Never fails: what cannot be read is reported in `opaque`.
pub fn parse(line: &str) -> CommandLine {
    let mut out = CommandLine::default();
    read_into(line, 0, &mut out);
    out
}

fn read_into(line: &str, depth: usize, out: &mut CommandLine) {
    if depth > MAX_DEPTH {
        out.opaque
            .get_or_insert_with(|| "shells nested too deeply".to_owned());
        return;
    }
    let tokens = match tokenize(line) {
        Ok(t) => t,
        Err(reason) => {
            out.opaque.get_or_insert(reason);
            return;
        }
    };
    let mut words: Vec<Word> = Vec::new();
    // The redirection waiting for its file, and whether it writes.
    let mut redirect_next: Option<bool> = None;
    for token in tokens {
        match token {
            Token::Separator => {
                simple_command(&words, depth, out);
                words.clear();
            }
            Token::Redirect { writes } => redirect_next = Some(writes),
            Token::Word(w) if redirect_next.is_some() => {
                let writes = redirect_next.take() == Some(true);
                let file = if w.expands {
                    // `> $FILE`: still a redirection, to a name the gateway cannot know.
                    format!("{} (expanded)", w.text)
                } else {
                    w.text
                };
                if writes && file != "/dev/null" {
                    out.writes.push(file.clone());
                }
                out.redirections.push(file);
            }
            Token::Word(w) => words.push(w),
        }
    }
    if redirect_next.is_some() {
        out.opaque
            .get_or_insert_with(|| "a redirection without a file".to_owned());
    }
    simple_command(&words, depth, out);
}

/// One simple command: optional assignments, then the program and its arguments.
fn simple_command(words: &[Word], depth: usize, out: &mut CommandLine) {
    let mut rest = words
        .iter()
        .skip_while(|w| is_assignment(&w.text) && !w.quoted_start);
    let Some(program) = rest.next() else {
        return;
    };
    let args: Vec<&Word> = rest.collect();
    if program.expands {
        out.opaque.get_or_insert_with(|| {
            format!("the program is a variable or pattern ({})", program.text)
        });
        return;
    }
    let name = program.text.clone();
    let base = basename(&name).to_owned();
    out.programs.push(name.clone());
    out.commands.push(
        std::iter::once(name)
            .chain(args.iter().map(|w| w.text.clone()))
            .collect(),
    );
    if OPAQUE_BUILTINS.contains(&base.as_str()) {
        out.opaque
            .get_or_insert_with(|| format!("{base} runs text the line does not show"));
        return;
    }
    if SHELLS.contains(&base.as_str()) {
        shell(&base, &args, depth, out);
        return;
    }
    if base == "find" {
        // -exec/-execdir/-ok/-okdir PROGRAM … ; run a program per file.
        let mut iter = args.iter();
        while let Some(a) = iter.next() {
            if matches!(a.text.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir") {
                let rest: Vec<Word> = iter
                    .by_ref()
                    .take_while(|w| w.text != ";" && w.text != "+")
                    .map(|w| (*w).clone())
                    .collect();
                simple_command(&rest, depth, out);
            }
        }
        return;
    }
    if let Some((_, with_argument)) = WRAPPERS.iter().find(|(w, _)| *w == base) {
        let mut iter = args.iter().peekable();
        let mut positional_skip = usize::from(base == "timeout");
        while let Some(a) = iter.peek() {
            let t = a.text.as_str();
            if t == "--" {
                iter.next();
                break;
            }
            if t.starts_with('-') && t.len() > 1 {
                iter.next();
                if with_argument.contains(&t) {
                    iter.next();
                }
                if base == "env" && (t == "-S" || t.starts_with("--split-string")) {
                    out.opaque
                        .get_or_insert_with(|| "env -S splits a string into a command".into());
                    return;
                }
                continue;
            }
            if base == "env" && is_assignment(t) {
                iter.next();
                continue;
            }
            if positional_skip > 0 {
                positional_skip -= 1;
                iter.next();
                continue;
            }
            break;
        }
        let inner: Vec<Word> = iter.map(|w| (*w).clone()).collect();
        simple_command(&inner, depth, out);
    }
}

/// `sh -c STRING …` reads STRING; `sh FILE` or `sh` reading stdin runs what the line does not
/// show.
fn shell(base: &str, args: &[&Word], depth: usize, out: &mut CommandLine) {
    let mut iter = args.iter();
    while let Some(a) = iter.next() {
        let t = a.text.as_str();
        if t.starts_with('-') && t.contains('c') && !t.starts_with("--") {
            match iter.next() {
                Some(script) if !script.expands => {
                    read_into(&script.text, depth + 1, out);
                }
                _ => {
                    out.opaque
                        .get_or_insert_with(|| format!("{base} -c with a script it cannot read"));
                }
            }
            return;
        }
        if !t.starts_with('-') {
            break;
        }
    }
    out.opaque
        .get_or_insert_with(|| format!("{base} runs a script the line does not show"));
}

fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

#[derive(Debug, Clone)]
struct Word {
    /// The word after quote removal.
    text: String,
    /// It holds an unquoted or double-quoted expansion (`$X`, `${X}`) or an unquoted pattern
    /// (`*`, `?`, `[`): what runs depends on the server's state.
    expands: bool,
    /// It starts with a quote (so `'A=b'` is a word, not an assignment).
    quoted_start: bool,
}

#[derive(Debug)]
enum Token {
    Word(Word),
    /// `|`, `||`, `&&`, `;`, `&`, `|&`, newline.
    Separator,
    /// `>`, `>>`, `<`, `2>`, `&>`, `>|`, `<>`; the next word is the file, which is written
    /// unless the redirection is `<`. `2>&1` and the like are read as a whole and need no file.
    Redirect {
        writes: bool,
    },
}

fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = line.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut word: Option<Word> = None;
    let flush = |word: &mut Option<Word>, tokens: &mut Vec<Token>| {
        if let Some(w) = word.take() {
            tokens.push(Token::Word(w));
        }
    };
    let start = |word: &mut Option<Word>, quoted: bool| -> Word {
        word.take().unwrap_or(Word {
            text: String::new(),
            expands: false,
            quoted_start: quoted,
        })
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => {
                flush(&mut word, &mut tokens);
                i += 1;
            }
            '\n' | ';' => {
                flush(&mut word, &mut tokens);
                if chars.get(i + 1) == Some(&';') {
                    return Err("`;;` (case) is not read by the gateway".to_owned());
                }
                tokens.push(Token::Separator);
                i += 1;
            }
            '|' | '&' => {
                flush(&mut word, &mut tokens);
                let next = chars.get(i + 1).copied();
                if c == '&' && next == Some('>') {
                    tokens.push(Token::Redirect { writes: true });
                    i += if chars.get(i + 2) == Some(&'>') { 3 } else { 2 };
                    continue;
                }
                tokens.push(Token::Separator);
                i += if next == Some(c) || (c == '|' && next == Some('&')) {
                    2
                } else {
                    1
                };
            }
            '<' | '>' => {
                // A word of digits just before is the descriptor (`2>`), not an argument.
                if word
                    .as_ref()
                    .is_some_and(|w| !w.quoted_start && w.text.chars().all(|d| d.is_ascii_digit()))
                {
                    word = None;
                }
                flush(&mut word, &mut tokens);
                let next = chars.get(i + 1).copied();
                if next == Some('(') {
                    return Err("process substitution is not read by the gateway".to_owned());
                }
                if c == '<' && next == Some('<') {
                    return Err("here-documents are not read by the gateway".to_owned());
                }
                let mut j = i + 1;
                if next == Some('>') || next == Some('|') || (c == '<' && next == Some('>')) {
                    j += 1;
                }
                if chars.get(j) == Some(&'&') {
                    // `2>&1`, `>&-`: duplicates a descriptor, no file.
                    j += 1;
                    while chars
                        .get(j)
                        .is_some_and(|d| d.is_ascii_digit() || *d == '-')
                    {
                        j += 1;
                    }
                    i = j;
                    continue;
                }
                // `<` alone reads; `>`, `>>`, `>|` and `<>` write.
                let writes = c == '>' || next == Some('>');
                tokens.push(Token::Redirect { writes });
                i = j;
            }
            '(' | ')' | '`' => {
                return Err(match c {
                    '`' => "command substitution is not read by the gateway".to_owned(),
                    _ => "subshells and groups are not read by the gateway".to_owned(),
                });
            }
            '\\' => {
                let mut w = start(&mut word, false);
                match chars.get(i + 1) {
                    Some('\n') => {}
                    Some(&n) => w.text.push(n),
                    None => return Err("the line ends with a lone backslash".to_owned()),
                }
                word = Some(w);
                i += 2;
            }
            '\'' => {
                let mut w = start(&mut word, true);
                let Some(end) = chars[i + 1..].iter().position(|&q| q == '\'') else {
                    return Err("an unterminated single quote".to_owned());
                };
                w.text.extend(&chars[i + 1..i + 1 + end]);
                word = Some(w);
                i += end + 2;
            }
            '"' => {
                let mut w = start(&mut word, true);
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err("an unterminated double quote".to_owned()),
                        Some('"') => break,
                        Some('`') => {
                            return Err("command substitution is not read by the gateway".to_owned())
                        }
                        Some('$') => {
                            if chars.get(j + 1) == Some(&'(') {
                                return Err(
                                    "command substitution is not read by the gateway".to_owned()
                                );
                            }
                            w.expands = true;
                            w.text.push('$');
                        }
                        Some('\\') => {
                            match chars.get(j + 1) {
                                Some(&n) if matches!(n, '$' | '`' | '"' | '\\') => w.text.push(n),
                                Some('\n') => {}
                                Some(&n) => {
                                    w.text.push('\\');
                                    w.text.push(n);
                                }
                                None => return Err("an unterminated double quote".to_owned()),
                            }
                            j += 1;
                        }
                        Some(&other) => w.text.push(other),
                    }
                    j += 1;
                }
                word = Some(w);
                i = j + 1;
            }
            '$' => {
                if chars.get(i + 1) == Some(&'(') {
                    return Err("command substitution is not read by the gateway".to_owned());
                }
                let mut w = start(&mut word, false);
                w.expands = true;
                w.text.push('$');
                word = Some(w);
                i += 1;
            }
            '#' if word.is_none() => {
                // A comment runs to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '{' | '}' if word.is_none() && is_alone(&chars, i) => {
                return Err("subshells and groups are not read by the gateway".to_owned());
            }
            '*' | '?' | '[' => {
                let mut w = start(&mut word, false);
                w.expands = true;
                w.text.push(c);
                word = Some(w);
                i += 1;
            }
            _ => {
                let mut w = start(&mut word, false);
                w.text.push(c);
                word = Some(w);
                i += 1;
            }
        }
    }
    flush(&mut word, &mut tokens);
    Ok(tokens)
}

/// `{` or `}` standing as a word of its own (a group), not inside one (`a{b}`).
fn is_alone(chars: &[char], i: usize) -> bool {
    chars
        .get(i + 1)
        .is_none_or(|c| c.is_whitespace() || *c == ';')
}

#[cfg(test)]
mod tests;
