/*!
Terminal rendering of the journal for people: the `sessions list` table, the `sessions show`
timeline and `sessions replay`.

Why this exists: the journal is read by an operator in a terminal as often as by a script, and
the two want different things. Scripts get `--json` (the reader's rows, unchanged); people get
aligned columns, colors for decisions and errors, and long cells cut with `…` so a table stays
a table. Everything here turns reader rows ([`crate::journal::reader`]) into text; nothing
here queries the journal, and nothing here decides what happened (the journal says it).

Rules every renderer follows:
- **Color only for a terminal**: [`Term::stdout`] enables it when stdout is a TTY and
  `NO_COLOR` is unset or empty. Captured output (tests, pipes, files) is plain text with no
  escape sequences.
- **Journal text is untrusted**: statements and details come from the agent and the server,
  so before they reach a terminal, control characters (escape sequences) and bidirectional
  overrides are shown escaped ([`one_line`]); a statement cannot repaint the operator's screen.
  Recorded terminal output keeps its line breaks but is escaped the same way
  ([`terminal_text`]), unless the operator asks for it raw (`sessions replay --raw`).
- **Widths are counted in `char`s**: no Unicode width tables (no new dependency); wide CJK
  text may misalign a column, which is cosmetic.

Modules: [`sessions`] (the list table, the show timeline and the event summaries they share
with replay), [`replay`] (timed playback of commands and terminal streams, with the sleeping
injectable for tests).
*/

pub mod replay;
pub mod sessions;

#[cfg(test)]
mod tests;

use std::io::{IsTerminal as _, Write as _};

/// Where output goes and what it can show: colors, and a width to fit when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// Emit ANSI colors.
    pub color: bool,
    /// Columns available; `None` means unlimited (not a terminal: never cut to fit).
    pub width: Option<usize>,
}

impl Term {
    /// No colors, no width limit: what pipes, files and tests get.
    pub const PLAIN: Term = Term {
        color: false,
        width: None,
    };

    /// What stdout supports: colors and its width on a terminal, plain otherwise.
    pub fn stdout() -> Term {
        let tty = std::io::stdout().is_terminal();
        Term {
            color: color_allowed(tty, std::env::var_os("NO_COLOR").as_deref()),
            width: if tty { terminal_width() } else { None },
        }
    }

    /// `text` in `paint`'s color when colors are on, else `text` unchanged.
    pub fn paint(&self, paint: Paint, text: &str) -> String {
        match paint.sgr() {
            Some(code) if self.color && !text.is_empty() => format!("\x1b[{code}m{text}\x1b[0m"),
            _ => text.to_owned(),
        }
    }
}

/// Colors are for terminals, and <https://no-color.org>: a non-empty `NO_COLOR` turns them off.
pub fn color_allowed(tty: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    tty && no_color.is_none_or(|v| v.is_empty())
}

/// The terminal's width: `COLUMNS` if set (lets a user force a width), else the window size.
fn terminal_width() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return Some(n);
    }
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass, and nothing else; on
    // failure (not a terminal) it returns -1 and we ignore the struct.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// The few styles the views use. Decisions have fixed colors everywhere: allow green, deny
/// red, review yellow; errors are red.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Paint {
    #[default]
    Plain,
    Bold,
    Dim,
    Green,
    Red,
    Yellow,
    Cyan,
}

impl Paint {
    fn sgr(self) -> Option<&'static str> {
        match self {
            Paint::Plain => None,
            Paint::Bold => Some("1"),
            Paint::Dim => Some("2"),
            Paint::Green => Some("32"),
            Paint::Red => Some("31"),
            Paint::Yellow => Some("33"),
            Paint::Cyan => Some("36"),
        }
    }

    /// The color of a policy decision (`allow`, `deny`, `review`); anything else is plain.
    pub fn decision(decision: &str) -> Paint {
        match decision {
            "allow" => Paint::Green,
            "deny" => Paint::Red,
            "review" => Paint::Yellow,
            _ => Paint::Plain,
        }
    }
}

/// Writes `text` to stdout. A closed pipe (`… | head`) is a reader that has seen enough, not
/// an error.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Display width of `text`, in `char`s (see the module notes).
pub fn width(text: &str) -> usize {
    text.chars().count()
}

/// `text` as one safe line: a line break (with the indentation around it) becomes one space,
/// tabs become spaces, and characters that would act on a terminal instead of being shown
/// (C0/C1 controls such as ESC, and the bidirectional overrides that can make text read
/// differently from what it is) are shown as escapes (`\x1b`, `\u{202e}`).
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\r' => {
                // Collapse the line break and the indentation on either side into one space.
                while out.ends_with([' ', '\t']) {
                    out.pop();
                }
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if !out.is_empty() {
                    out.push(' ');
                }
            }
            '\t' => out.push(' '),
            c => push_shown(&mut out, c),
        }
    }
    out
}

/// Recorded terminal text (an SSH session's output) made safe to print: its lines stay lines
/// (`\r\n` and a lone `\r` end a line, tabs stay), and everything else that would act on the
/// terminal (escape sequences that move the cursor, set the title or write the clipboard;
/// bidirectional overrides) is shown escaped, as [`one_line`] does. `sessions replay --raw`
/// skips this for an operator who wants the colors and trusts the recording.
pub fn terminal_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                out.push('\n');
            }
            '\n' | '\t' => out.push(c),
            c => push_shown(&mut out, c),
        }
    }
    out
}

/// `c` as itself, or escaped (`\x1b`, `\u{202e}`) when it would act on a terminal instead of
/// being shown: C0/C1 controls, and the bidirectional controls.
fn push_shown(out: &mut String, c: char) {
    if (c as u32) < 0x80 && c.is_control() {
        out.push_str(&format!("\\x{:02x}", c as u32));
    } else if c.is_control() || is_bidi_control(c) {
        out.push_str(&format!("\\u{{{:x}}}", c as u32));
    } else {
        out.push(c);
    }
}

/// Characters that reorder the display of the text around them ("Trojan Source").
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` cut to at most `max` chars with `…` marking the cut: at the end, or at the start
/// when `keep_end` (paths, where the file name matters most).
pub fn truncate(text: &str, max: usize, keep_end: bool) -> String {
    let n = width(text);
    if n <= max {
        return text.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    if keep_end {
        let tail: String = text.chars().skip(n - (max - 1)).collect();
        format!("…{tail}")
    } else {
        let head: String = text.chars().take(max - 1).collect();
        format!("{head}…")
    }
}

/// One column of a [`Table`]: its header and how wide it may be.
#[derive(Debug, Clone)]
pub struct Column {
    name: &'static str,
    /// Never wider than this (cells are cut with `…`), terminal or not.
    max: Option<usize>,
    /// On a terminal too narrow for the table, may shrink down to this width (`None`: never
    /// shrinks; ids and times are worthless cut).
    shrink_to: Option<usize>,
    keep_end: bool,
}

impl Column {
    pub fn new(name: &'static str) -> Column {
        Column {
            name,
            max: None,
            shrink_to: None,
            keep_end: false,
        }
    }

    /// Caps the column's width (never below its header's).
    pub fn max(mut self, max: usize) -> Column {
        self.max = Some(max.max(width(self.name)));
        self
    }

    /// Lets the column give way on a narrow terminal, down to `min` chars.
    pub fn shrink(mut self, min: usize) -> Column {
        self.shrink_to = Some(min.max(width(self.name)).max(2));
        self
    }

    /// Cuts long cells at the start, keeping their end.
    pub fn keep_end(mut self) -> Column {
        self.keep_end = true;
        self
    }
}

/// A piece of text and its style.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub paint: Paint,
}

impl Cell {
    /// A cell showing `text` made safe by [`one_line`].
    pub fn new(text: impl AsRef<str>) -> Cell {
        Cell {
            text: one_line(text.as_ref()),
            paint: Paint::Plain,
        }
    }

    pub fn paint(mut self, paint: Paint) -> Cell {
        self.paint = paint;
        self
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::new(text)
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell::new(text)
    }
}

/// Rows of cells under a header, every column as wide as its widest cell (within limits),
/// two spaces apart. A row can carry notes: lines printed under it, starting at the last
/// column (the timeline's results and approvals).
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Row>,
    header: bool,
}

#[derive(Debug, Clone)]
struct Row {
    cells: Vec<Cell>,
    notes: Vec<Cell>,
}

/// Space between two columns.
const GAP: usize = 2;

impl Table {
    pub fn new(columns: Vec<Column>) -> Table {
        Table {
            columns,
            rows: Vec::new(),
            header: true,
        }
    }

    /// Leaves the header line out (sample rows, which have no column names).
    pub fn without_header(mut self) -> Table {
        self.header = false;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn push(&mut self, mut cells: Vec<Cell>) {
        cells.resize(self.columns.len(), Cell::default());
        self.rows.push(Row {
            cells,
            notes: Vec::new(),
        });
    }

    /// Adds a note line under the last row (ignored before the first row).
    pub fn note(&mut self, note: Cell) {
        if let Some(row) = self.rows.last_mut() {
            row.notes.push(note);
        }
    }

    /// Each column's width: its widest cell or header, within its `max`; then, if the table
    /// is wider than the terminal, the widest shrinkable columns give way one char at a time
    /// (so the space is shared, not taken from one column), down to their minimums.
    pub fn widths(&self, term: &Term) -> Vec<usize> {
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let header = if self.header { width(c.name) } else { 0 };
                let widest = self
                    .rows
                    .iter()
                    .map(|r| width(&r.cells[i].text))
                    .fold(header, usize::max);
                c.max.map_or(widest, |m| widest.min(m))
            })
            .collect();
        if let Some(available) = term.width {
            let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1);
            while total(&widths) > available {
                let candidate = self
                    .columns
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .filter_map(|(i, (c, &w))| c.shrink_to.filter(|&min| w > min).map(|_| (w, i)))
                    .max();
                match candidate {
                    Some((_, i)) => widths[i] -= 1,
                    None => break,
                }
            }
        }
        widths
    }

    /// The table as text, one line per row (and note), each ending in a newline.
    pub fn render(&self, term: &Term) -> String {
        let widths = self.widths(term);
        let mut out = String::new();
        if self.header {
            let names: Vec<Cell> = self
                .columns
                .iter()
                .map(|c| Cell::new(c.name).paint(Paint::Bold))
                .collect();
            self.line(&mut out, &names, &widths, term);
        }
        // Notes start where the last column starts.
        let indent = widths.iter().rev().skip(1).map(|w| w + GAP).sum::<usize>();
        for row in &self.rows {
            self.line(&mut out, &row.cells, &widths, term);
            for note in &row.notes {
                let room = term.width.map(|w| w.saturating_sub(indent).max(20));
                let text =
                    room.map_or_else(|| note.text.clone(), |r| truncate(&note.text, r, false));
                out.push_str(&" ".repeat(indent));
                out.push_str(&term.paint(note.paint, &text));
                out.push('\n');
            }
        }
        out
    }

    fn line(&self, out: &mut String, cells: &[Cell], widths: &[usize], term: &Term) {
        let mut line = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, ((cell, column), &w)) in cells.iter().zip(&self.columns).zip(widths).enumerate() {
            let text = truncate(&cell.text, w, column.keep_end);
            line.push_str(&term.paint(cell.paint, &text));
            // Padding goes outside the color, and the last column gets none.
            if i < last {
                line.push_str(&" ".repeat(w - width(&text) + GAP));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}
