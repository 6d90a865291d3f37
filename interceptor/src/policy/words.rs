//! `commands` patterns: globs over the *words* of one simple command, the way a reader sees
//! `rm -rf /srv` (three words), not over its text.
//!
//! Why words: the question "does this `rm` recurse?" is about one argument. A glob over the
//! joined text cannot ask it (`rm *-r*` also holds for `rm -f report.txt`, the `-r` of
//! "report" being found after `-f `). So each word of a pattern matches one word of the
//! command, with the usual glob syntax inside the word (`*`, `?`, `[!-]`, `{a,b}`; `*` crosses
//! `/`), and the word `**` stands for any number of words, none included. The first word is
//! the program, matched against its name as written and its base name (`/bin/rm` is `rm`).
//!
//! `rm ** -[!-]*r* **`: rm with a short option holding r anywhere among its arguments.
//! `find ** -delete **`: find deleting. `hostname`: hostname with no argument at all.
//! A pattern starting with `!` excludes, as in every other pattern list.

use globset::{GlobBuilder, GlobMatcher};

/// One word of a pattern.
#[derive(Debug, Clone)]
enum Word {
    /// `**`: any number of words.
    Any,
    Glob(GlobMatcher),
}

/// One pattern: its words in order.
#[derive(Debug, Clone)]
struct Pattern(Vec<Word>);

impl Pattern {
    fn compile(text: &str) -> Result<Pattern, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.is_empty() {
            return Err(format!("command pattern {text:?} has no words"));
        }
        words
            .into_iter()
            .map(|w| {
                if w == "**" {
                    return Ok(Word::Any);
                }
                GlobBuilder::new(w)
                    .literal_separator(false)
                    .build()
                    .map(|g| Word::Glob(g.compile_matcher()))
                    .map_err(|e| format!("command pattern {text:?}: {e}"))
            })
            .collect::<Result<_, _>>()
            .map(Pattern)
    }

    fn matches(&self, command: &[String]) -> bool {
        let Some((program, args)) = command.split_first() else {
            return false;
        };
        let base = program.rsplit('/').next().unwrap_or(program);
        match self.0.split_first() {
            Some((Word::Glob(g), rest)) => {
                (g.is_match(program) || g.is_match(base)) && words_match(rest, args)
            }
            // A pattern starting with `**` may skip the program itself.
            Some((Word::Any, _)) => words_match(&self.0, command),
            None => false,
        }
    }
}

/// Whether `pattern` matches all of `words` (backtracking over `**`; commands are short).
fn words_match(pattern: &[Word], words: &[String]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((Word::Any, rest)) => (0..=words.len()).any(|skip| words_match(rest, &words[skip..])),
        Some((Word::Glob(g), rest)) => words
            .split_first()
            .is_some_and(|(first, others)| g.is_match(first) && words_match(rest, others)),
    }
}

/// A `commands` list: includes and `!` exclusions.
#[derive(Debug, Clone)]
pub struct CommandPatterns {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl CommandPatterns {
    pub fn compile(list: &[String]) -> Result<Option<CommandPatterns>, String> {
        if list.is_empty() {
            return Ok(None);
        }
        let mut patterns = CommandPatterns {
            include: Vec::new(),
            exclude: Vec::new(),
        };
        for text in list {
            match text.strip_prefix('!') {
                Some(excluded) => patterns.exclude.push(Pattern::compile(excluded)?),
                None => patterns.include.push(Pattern::compile(text)?),
            }
        }
        Ok(Some(patterns))
    }

    /// Holds for a command an include matches (or any, with only exclusions) and no
    /// exclusion does.
    pub fn matches(&self, command: &[String]) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(command)))
            && !self.exclude.iter().any(|p| p.matches(command))
    }
}

#[cfg(test)]
mod tests {
    use super::CommandPatterns;

    fn holds(patterns: &[&str], command: &str) -> bool {
        let list: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        let words: Vec<String> = command.split(' ').map(str::to_owned).collect();
        CommandPatterns::compile(&list)
            .expect("patterns")
            .expect("some")
            .matches(&words)
    }

    #[test]
    fn words_match_words_and_double_star_any_number_of_them() {
        let recursive = ["rm ** -{[rR],[!-]*[rR]}* **", "rm ** --recursive **"];
        assert!(holds(&recursive, "rm -rf /srv"));
        assert!(holds(&recursive, "/bin/rm -f -r /srv"));
        assert!(holds(&recursive, "rm x --recursive"));
        assert!(holds(&recursive, "rm -R x"));
        assert!(!holds(&recursive, "rm -f report.txt"));
        assert!(!holds(&recursive, "rm --force x"));
        assert!(!holds(&recursive, "rmdir -r x"));
        // `**` may be empty; a plain word needs exactly one.
        assert!(holds(&["ls **"], "ls"));
        assert!(holds(&["hostname"], "hostname"));
        assert!(!holds(&["hostname"], "hostname evil"));
        // `*` inside a word crosses `/`.
        assert!(holds(&["dd ** of=/dev/* **"], "dd if=x of=/dev/sda bs=1M"));
    }

    #[test]
    fn exclusions_carve_out_of_includes() {
        let reads = ["find **", "!find ** -delete **", "!find ** -exec **"];
        assert!(holds(&reads, "find / -name x"));
        assert!(!holds(&reads, "find / -name x -delete"));
        assert!(!holds(&reads, "find / -exec rm {} ;"));
        assert!(holds(&["!ls **"], "cat x"));
        assert!(!holds(&["!ls **"], "ls -l"));
    }

    #[test]
    fn an_empty_pattern_is_an_error() {
        assert!(CommandPatterns::compile(&["  ".to_owned()]).is_err());
    }
}
