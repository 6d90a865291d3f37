//! Content detectors: find sensitive values (cards, identity numbers, contact data, addresses,
//! credentials) inside a column value, whatever protocol carried it.
//!
//! Why this exists: masking by column name alone is bypassed by anything that renames or wraps
//! a column (`SELECT concat(ssn)`, `AS x`, JSON aggregates), so the gateway also looks at the
//! values themselves. This module only *finds*; choosing a strategy (redact, partial, hash,
//! null) and rewriting rows belong to the rest of `mask`. It knows nothing of PostgreSQL or any
//! other protocol: it takes bytes and returns byte ranges.
//!
//! Design decisions:
//! - **One automaton for every enabled shape.** All candidate shapes are compiled into a single
//!   multi-pattern `regex_automata::meta::Regex` (leftmost-first, lazy DFA), so a value is
//!   walked once whatever the number of detectors, and the pattern id of a match says which
//!   detector found it. Building it takes milliseconds, so a [`Scanner`] is built once per
//!   policy and shared by every session (`Arc`); the regex keeps one lazy-DFA cache per thread.
//! - **Regex for shape, code for validity** (as Presidio does): a card must pass Luhn, an IBAN
//!   mod-97, an SSN the area/group/serial rules, an IPv4 address octets ≤ 255, an IPv6 address
//!   `Ipv6Addr::from_str`, a JWT header must decode to a JSON object. A candidate that fails is
//!   skipped and the scan goes on after it; overlapping weaker shapes are not retried.
//! - **Order decides ties.** Leftmost-first picks the match that starts first; at the same start
//!   the earlier pattern wins, so the table lists secrets and validated detectors before the
//!   loose ones (phone, email). Card groupings are restricted to real layouts (4-4-4-4…, 4-6-5,
//!   4-6-4) so the tail of a UUID (`4166-446655440000`) is not read as a card.
//! - **Glued letters do not hide a value.** Cards and SSNs are bounded by "not a digit"
//!   rather than by `\b`, IBANs and emails need no boundary after them, so `x4111111111111111x`
//!   (`'x'||card||'x'`), `id4111111111111111z` and `a123-45-6789b` are found. Digits glued on
//!   are not searched through: a run of more than 19 digits is never a card (see `unglue`).
//! - **ASCII only.** `\b` and `\d` are ASCII: a Unicode `\b` makes the lazy DFA give up on the
//!   first non-ASCII byte, and every detected format is ASCII anyway. The haystack may be any
//!   bytes (invalid UTF-8 included); nothing here indexes past a bound or unwraps input.
//! - **Loose shapes are kept out of the automaton.** IPv6 candidates must contain `::` or have
//!   all eight groups, so clock times (`10:42:44`) and MAC addresses never reach the validator;
//!   a bare 9-digit run is never an SSN and a bare 10-digit run never a phone, because both
//!   are everywhere in order and account numbers.
//! - **A PEM key is the whole block.** The automaton finds the `BEGIN … PRIVATE KEY` line and
//!   the validator extends the match to the matching `END` line; without one, the match runs
//!   to the end of the value (fail closed: half a key is still a key).
//! - **Measured, and kept simple.** The lazy DFA costs ~2.3 ns a byte here, bound by the
//!   latency of its dependent table loads, not by its number of states (dropping any one
//!   detector or bounding IPv6 groups changes the throughput by noise). Two ways around it were
//!   built and measured with the `masking` benchmark, and both lost on column data: a per-value
//!   byte-count gate (rejects names and status words, but every longer value holds a digit and
//!   a colon, and counting costs per value), and a scan for trigger bytes running the automaton
//!   anchored only where a match can start (digit-dense values such as timestamps, UUIDs and
//!   order ids have a trigger every ~3 bytes, and each mispredicted branch costs more than the
//!   DFA: 3.4–4.1 ns a byte against 1.8–2.6). So one unanchored search does all the work.

use std::{net::Ipv6Addr, ops::Range, str::FromStr};

use regex_automata::{
    meta, nfa::thompson::WhichCaptures, util::syntax, Anchored, Input, MatchKind, PatternID,
};

/// A kind of sensitive value recognised by content.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// Payment card number (13–19 digits) that passes Luhn.
    CreditCard,
    /// International bank account number that passes ISO 13616 mod-97.
    Iban,
    /// US social security number with a valid area, group and serial.
    Ssn,
    /// E-mail address.
    Email,
    /// Telephone number: E.164 (`+…`) or North-American formats with separators.
    Phone,
    /// Dotted-quad IPv4 address.
    Ipv4,
    /// IPv6 address.
    Ipv6,
    /// AWS access key id.
    AwsAccessKey,
    /// GitHub personal, OAuth, app or fine-grained token.
    GithubToken,
    /// Slack bot, user, app or refresh token.
    SlackToken,
    /// JSON Web Token.
    Jwt,
    /// PEM private key block.
    PrivateKey,
    /// Stripe live secret or restricted key.
    StripeKey,
}

impl Detector {
    pub const ALL: [Detector; 13] = [
        Detector::CreditCard,
        Detector::Iban,
        Detector::Ssn,
        Detector::Email,
        Detector::Phone,
        Detector::Ipv4,
        Detector::Ipv6,
        Detector::AwsAccessKey,
        Detector::GithubToken,
        Detector::SlackToken,
        Detector::Jwt,
        Detector::PrivateKey,
        Detector::StripeKey,
    ];

    /// The snake_case name, as written in policies and journaled in counts ("credit_card").
    pub fn name(self) -> &'static str {
        match self {
            Detector::CreditCard => "credit_card",
            Detector::Iban => "iban",
            Detector::Ssn => "ssn",
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::Ipv4 => "ipv4",
            Detector::Ipv6 => "ipv6",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::GithubToken => "github_token",
            Detector::SlackToken => "slack_token",
            Detector::Jwt => "jwt",
            Detector::PrivateKey => "private_key",
            Detector::StripeKey => "stripe_key",
        }
    }

    /// True for credentials (AWS, GitHub, Slack, JWT, PEM private key, Stripe).
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            Detector::AwsAccessKey
                | Detector::GithubToken
                | Detector::SlackToken
                | Detector::Jwt
                | Detector::PrivateKey
                | Detector::StripeKey
        )
    }

    /// Parses a policy name: a detector name, or the groups "all", "pii" (card, iban, ssn,
    /// email, phone, ipv4, ipv6), "secrets".
    pub fn parse_group(name: &str) -> Option<Vec<Detector>> {
        match name {
            "all" => Some(Detector::ALL.to_vec()),
            "pii" => Some(
                Detector::ALL
                    .into_iter()
                    .filter(|d| !d.is_secret())
                    .collect(),
            ),
            "secrets" => Some(
                Detector::ALL
                    .into_iter()
                    .filter(|d| d.is_secret())
                    .collect(),
            ),
            _ => Detector::ALL
                .into_iter()
                .find(|d| d.name() == name)
                .map(|d| vec![d]),
        }
    }
}

/// One validated match inside a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub detector: Detector,
    pub range: Range<usize>,
}

/// What a candidate must pass beyond its shape.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// The shape is the whole rule (prefixed secrets, email, North-American phone).
    Shape,
    /// The shape, at most this long.
    MaxLen(usize),
    Luhn,
    Mod97,
    Ssn,
    E164,
    Ipv4,
    Ipv6,
    JwtHeader,
    PemBlock,
}

/// One pattern of the automaton. A detector may own several (one per layout).
struct Rule {
    detector: Detector,
    check: Check,
    pattern: &'static str,
}

/// IPv6 candidate: all eight groups, six groups and a dotted quad, or a `::` form (possibly
/// ending in a dotted quad, tried before a hex group so `::ffff:127.0.0.1` is taken whole).
/// Group sizes are left unbounded on purpose: counted repetitions multiply the lazy DFA's
/// states on every hex-looking word, and `Ipv6Addr::from_str` rejects long groups anyway.
const IPV6: &str = r"(?:[0-9A-Fa-f]+:){7}[0-9A-Fa-f]+|(?:[0-9A-Fa-f]+:){6}\d+\.\d+\.\d+\.\d+|[0-9A-Fa-f:]*::(?:[0-9A-Fa-f]*:)*(?:\d+\.\d+\.\d+\.\d+|[0-9A-Fa-f]*)";

/// Email: a local part (non-ASCII bytes allowed, for `josé@…`), one or more domain labels and
/// a TLD of letters. Nothing is required after the TLD, so a digit glued on
/// (`email||'1'`) does not hide the address; letters glued on either side are taken in.
const EMAIL: &str = r"[A-Za-z0-9._%+\x80-\xFF-]+@(?:[A-Za-z0-9\x80-\xFF-]+\.)+[A-Za-z]{2,}";

/// Priority order: at the same start position the first rule wins (see the module doc).
const RULES: &[Rule] = &[
    Rule {
        detector: Detector::PrivateKey,
        check: Check::PemBlock,
        pattern: r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    },
    Rule {
        detector: Detector::AwsAccessKey,
        check: Check::Shape,
        pattern: r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
    },
    Rule {
        detector: Detector::GithubToken,
        check: Check::Shape,
        pattern: r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
    },
    Rule {
        detector: Detector::GithubToken,
        // At most 255 after the prefix: checked in code, as a 255-step counter would bloat
        // the automaton.
        check: Check::MaxLen(11 + 255),
        pattern: r"\bgithub_pat_[A-Za-z0-9_]{22,}\b",
    },
    Rule {
        detector: Detector::SlackToken,
        check: Check::Shape,
        pattern: r"\bxox[baprs]-[A-Za-z0-9-]{10,}",
    },
    Rule {
        detector: Detector::StripeKey,
        check: Check::Shape,
        pattern: r"\b[rs]k_live_[A-Za-z0-9]{20,}",
    },
    Rule {
        detector: Detector::Jwt,
        check: Check::JwtHeader,
        pattern: r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{10,}",
    },
    // Cards: contiguous, 4-4-4-(1..4)[-(1..3)], 4-6-(4..5), with one separator kind each.
    // Cards and SSNs are bounded by "not a digit" rather than `\b`, so letters glued on
    // (`'x'||card||'x'`, `format('id%sz', card)`) do not hide them: each pattern takes the byte
    // on either side (or the edge of the value) and the validator drops it (see `unglue`).
    Rule {
        detector: Detector::CreditCard,
        check: Check::Luhn,
        pattern: r"(?:\A|\D)\d{13,19}(?:\D|\z)",
    },
    Rule {
        detector: Detector::CreditCard,
        check: Check::Luhn,
        pattern: r"(?:\A|\D)(?:\d{4}(?: \d{4}){2} \d{1,4}(?: \d{1,3})?|\d{4} \d{6} \d{4,5})(?:\D|\z)",
    },
    Rule {
        detector: Detector::CreditCard,
        check: Check::Luhn,
        pattern: r"(?:\A|\D)(?:\d{4}(?:-\d{4}){2}-\d{1,4}(?:-\d{1,3})?|\d{4}-\d{6}-\d{4,5})(?:\D|\z)",
    },
    Rule {
        detector: Detector::Ssn,
        check: Check::Ssn,
        pattern: r"(?:\A|\D)(?:\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4})(?:\D|\z)",
    },
    // IBANs: no `\b` either, so letters glued on do not hide one. Lower-case glue stops the
    // shape by itself; upper-case letters or digits glued after it are cut at the country's
    // length by the validator (`iban_length`).
    Rule {
        detector: Detector::Iban,
        check: Check::Mod97,
        pattern: r"[A-Z]{2}\d{2}[A-Z0-9]+|[A-Z]{2}\d{2}(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?",
    },
    Rule {
        detector: Detector::Ipv4,
        check: Check::Ipv4,
        pattern: r"\b\d{1,3}(?:\.\d{1,3}){3}\b",
    },
    Rule {
        detector: Detector::Ipv6,
        check: Check::Ipv6,
        pattern: IPV6,
    },
    // E.164: `+`, not glued to a word, 8–15 digits with single separators; the country code
    // may be followed by a parenthesised area code.
    Rule {
        detector: Detector::Phone,
        check: Check::E164,
        pattern: r"\B\+\d(?:[ .-]?\d){7,14}\b|\B\+\d{1,3}[ .-]?\(\d{1,4}\)[ .-]?\d(?:[ .-]?\d){3,11}\b",
    },
    Rule {
        detector: Detector::Phone,
        check: Check::Shape,
        pattern: r"\b[2-9]\d{2}-[2-9]\d{2}-\d{4}\b|\b[2-9]\d{2}\.[2-9]\d{2}\.\d{4}\b|\([2-9]\d{2}\) ?[2-9]\d{2}-\d{4}\b",
    },
    // Last: the loosest shape.
    Rule {
        detector: Detector::Email,
        check: Check::Shape,
        pattern: EMAIL,
    },
];

/// The enabled detectors, compiled once (building it may take milliseconds; it is shared by
/// all sessions via Arc and must be Send + Sync).
pub struct Scanner {
    /// Every enabled pattern, in `RULES` order; `None` when no detector is enabled.
    regex: Option<meta::Regex>,
    /// The rule behind each pattern id of `regex`.
    rules: Vec<&'static Rule>,
}

/// Shows the enabled detectors; the compiled automaton says nothing useful in a log.
impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut detectors: Vec<Detector> = self.rules.iter().map(|rule| rule.detector).collect();
        detectors.dedup();
        f.debug_struct("Scanner")
            .field("detectors", &detectors)
            .finish_non_exhaustive()
    }
}

impl Scanner {
    pub fn new(enabled: &[Detector]) -> Scanner {
        let rules: Vec<&'static Rule> = RULES
            .iter()
            .filter(|rule| enabled.contains(&rule.detector))
            .collect();
        let regex = (!rules.is_empty()).then(|| {
            let patterns: Vec<&str> = rules.iter().map(|rule| rule.pattern).collect();
            meta::Regex::builder()
                .syntax(syntax::Config::new().unicode(false).utf8(false))
                .configure(
                    meta::Config::new()
                        .match_kind(MatchKind::LeftmostFirst)
                        .which_captures(WhichCaptures::Implicit)
                        .utf8_empty(false),
                )
                .build_many(&patterns)
                // The patterns are constants of this file and a test builds every detector,
                // so failing here is a bug in this file, not bad input.
                .expect("the built-in detector patterns compile")
        });
        Scanner { regex, rules }
    }

    pub fn is_empty(&self) -> bool {
        self.regex.is_none()
    }

    /// Appends the validated matches in `value` to `out`, in order, non-overlapping. `value` is
    /// arbitrary bytes (usually UTF-8 but not always; must never panic on any input).
    pub fn find(&self, value: &[u8], out: &mut Vec<Found>) {
        let Some(regex) = &self.regex else { return };
        let mut at = 0;
        while at < value.len() {
            let Some(m) = regex.search(&Input::new(value).range(at..)) else {
                break;
            };
            let Some(rule) = self.rules.get(m.pattern().as_usize()) else {
                break;
            };
            match validate(rule.check, value, m.range()) {
                Ok(range) => {
                    at = range.end.max(at + 1);
                    out.push(Found {
                        detector: rule.detector,
                        range,
                    });
                }
                Err(_) => {
                    // A rejected candidate must not hide a value of another detector that
                    // overlaps it: `1234567890123@example.com` is a card shape that fails
                    // Luhn, and an email. Try the other patterns anchored where it started,
                    // then go on one byte further (never from its end), so that a value
                    // starting inside it is still seen. Every pattern is non-empty; never loop
                    // on the same position.
                    if let Some(found) = self.anchored_alternative(value, m.start(), m.pattern()) {
                        at = found.range.end.max(at + 1);
                        out.push(found);
                    } else {
                        at = (m.start() + 1).max(at + 1);
                    }
                }
            }
        }
    }

    /// The first other pattern (in `RULES` order) whose match starting exactly at `start`
    /// validates.
    fn anchored_alternative(
        &self,
        value: &[u8],
        start: usize,
        rejected: PatternID,
    ) -> Option<Found> {
        let regex = self.regex.as_ref()?;
        (0..self.rules.len())
            .filter_map(|i| PatternID::new(i).ok())
            .filter(|pid| *pid != rejected)
            .find_map(|pid| {
                let input = Input::new(value)
                    .range(start..)
                    .anchored(Anchored::Pattern(pid));
                let m = regex.search(&input)?;
                let rule = self.rules.get(pid.as_usize())?;
                let range = validate(rule.check, value, m.range()).ok()?;
                Some(Found {
                    detector: rule.detector,
                    range,
                })
            })
    }
}

/// Checks a candidate beyond its shape. Returns the range to report (without the glue bytes
/// a digit-bounded shape took on either side; a PEM block grows to its END line), or where
/// to resume the scan when the candidate is not valid.
fn validate(check: Check, value: &[u8], range: Range<usize>) -> Result<Range<usize>, usize> {
    let skip = range.end;
    let Some(text) = value.get(range.clone()) else {
        return Err(skip);
    };
    let valid = match check {
        Check::Shape => true,
        Check::MaxLen(max) => text.len() <= max,
        Check::Luhn | Check::Ssn => {
            let digits = unglue(value, range.clone());
            let text = value.get(digits.clone()).unwrap_or_default();
            let valid = match check {
                Check::Luhn => luhn_card(text),
                _ => ssn(text),
            };
            // An invalid candidate glued to a word may overlap a match of another shape
            // (the local part of `x4111111111111112@example.com`): the scan resumes at its
            // first digit, not after it. Only then: after a space or a bracket nothing else
            // can start there, and resuming early would check windows of grouped digits
            // (`1234 5678 9012 3456 7890`) that were never checked before.
            let word_glue = digits.start > range.start
                && value.get(range.start).is_some_and(|&b| {
                    b.is_ascii_alphabetic() || b >= 0x80 || b"._%+-".contains(&b)
                });
            return match (valid, word_glue) {
                (true, _) => Ok(digits),
                (false, true) => Err(digits.start),
                (false, false) => Err(digits.end),
            };
        }
        Check::Mod97 => {
            return iban(text)
                .map(|len| range.start..range.start + len)
                .ok_or(skip)
        }
        Check::E164 => (8..=15).contains(&text.iter().filter(|b| b.is_ascii_digit()).count()),
        Check::Ipv4 => ipv4(value, &range),
        Check::Ipv6 => ipv6(value, &range),
        Check::JwtHeader => jwt_header(text),
        Check::PemBlock => return Ok(range.start..pem_end(value, &range)),
    };
    if valid {
        Ok(range)
    } else {
        Err(skip)
    }
}

/// The digits of a digit-bounded candidate: its shape takes one non-digit byte on each side
/// unless it touches the edge of the value, and that byte is not part of the value found.
///
/// Why "not a digit" and not "not a word character": an agent can glue letters on
/// (`'x'||card||'x'`), and a card with letters around it is still a card. Digits glued on
/// are another matter, and deliberately left alone: a run of more than 19 digits is never
/// searched for a card inside it. Every such run holds a Luhn-valid window of 13 to 19
/// digits almost surely (a 20-digit run has 35 windows, each valid with probability 1/10:
/// 1 − 0.9³⁵ ≈ 97 %), so "mask a card found inside" would NULL every long number
/// (`2/7::numeric` is `0.28571428571428571429`, 20-digit identifiers), and it would not stop
/// an agent that can compute: `card*10`, `substr(card, 1, 8)` or `translate(card, …)` defeat
/// any content detector. Column rules are the control for a column known to hold cards.
///
/// The price of letting letters touch: digit runs inside hex strings are candidates too. A
/// 64-character hex digest holds a run of 13 to 19 decimal digits about one time in 25,
/// and such a run passes Luhn one time in ten, so about 0.4 % of hex digests get a span
/// masked. On a security gateway that is the right side to err on.
fn unglue(value: &[u8], range: Range<usize>) -> Range<usize> {
    let glued = |i: usize| value.get(i).is_some_and(|b| !b.is_ascii_digit());
    let start = if glued(range.start) {
        range.start + 1
    } else {
        range.start
    };
    let end = if range.end > start && glued(range.end - 1) {
        range.end - 1
    } else {
        range.end
    };
    start..end
}

/// Luhn over the digits (separators skipped), 13–19 digits, not all the same digit.
fn luhn_card(text: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut count = 0usize;
    let mut all_same = true;
    let mut first = None;
    for &b in text.iter().rev() {
        if !b.is_ascii_digit() {
            continue;
        }
        let digit = u32::from(b - b'0');
        match first {
            None => first = Some(b),
            Some(f) => all_same &= f == b,
        }
        sum += if count % 2 == 1 {
            let doubled = digit * 2;
            if doubled > 9 {
                doubled - 9
            } else {
                doubled
            }
        } else {
            digit
        };
        count += 1;
    }
    (13..=19).contains(&count) && sum.is_multiple_of(10) && !all_same
}

/// The length in bytes of the IBAN at the start of `text`: the whole candidate when it
/// passes mod-97, else its first N characters (N the country's IBAN length) when letters or
/// digits were glued after it (`DE89370400440532013000X`) and those pass.
fn iban(text: &[u8]) -> Option<usize> {
    if iban_mod97(text) {
        return Some(text.len());
    }
    let want = iban_length(text.get(..2)?)?;
    // The byte index just after the `want`-th character that is not a space.
    let mut seen = 0;
    let end = text.iter().position(|&b| {
        seen += usize::from(b != b' ');
        seen == want
    })? + 1;
    // A cut must fall between two characters of the IBAN, never on a glued one.
    (end < text.len() && iban_mod97(text.get(..end)?)).then_some(end)
}

/// ISO 13616 (15–34 characters): move the first four characters to the end, letters to 10..35, remainder mod 97
/// must be 1. Spaces between groups are skipped.
fn iban_mod97(text: &[u8]) -> bool {
    let compact = || text.iter().copied().filter(|&b| b != b' ');
    let len = compact().count();
    if !(15..=34).contains(&len) {
        return false;
    }
    let mut remainder = 0u32;
    for b in compact().skip(4).chain(compact().take(4)) {
        remainder = match b {
            b'0'..=b'9' => (remainder * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (remainder * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    remainder == 1
}

/// The IBAN length of a country (SWIFT IBAN registry), used only to cut glued characters
/// off a candidate that fails as a whole. A country missing here only loses that cut.
fn iban_length(country: &[u8]) -> Option<usize> {
    #[rustfmt::skip]
    const LENGTHS: &[(&[u8; 2], usize)] = &[
        (b"AD", 24), (b"AE", 23), (b"AL", 28), (b"AT", 20), (b"AZ", 28), (b"BA", 20),
        (b"BE", 16), (b"BG", 22), (b"BH", 22), (b"BR", 29), (b"BY", 28), (b"CH", 21),
        (b"CR", 22), (b"CY", 28), (b"CZ", 24), (b"DE", 22), (b"DK", 18), (b"DO", 28),
        (b"EE", 20), (b"EG", 29), (b"ES", 24), (b"FI", 18), (b"FO", 18), (b"FR", 27),
        (b"GB", 22), (b"GE", 22), (b"GI", 23), (b"GL", 18), (b"GR", 27), (b"GT", 28),
        (b"HR", 21), (b"HU", 28), (b"IE", 22), (b"IL", 23), (b"IQ", 23), (b"IS", 26),
        (b"IT", 27), (b"JO", 30), (b"KW", 30), (b"KZ", 20), (b"LB", 28), (b"LC", 32),
        (b"LI", 21), (b"LT", 20), (b"LU", 20), (b"LV", 21), (b"MC", 27), (b"MD", 24),
        (b"ME", 22), (b"MK", 19), (b"MR", 27), (b"MT", 31), (b"MU", 30), (b"NL", 18),
        (b"NO", 15), (b"PK", 24), (b"PL", 28), (b"PS", 29), (b"PT", 25), (b"QA", 29),
        (b"RO", 24), (b"RS", 22), (b"SA", 24), (b"SC", 31), (b"SE", 24), (b"SI", 19),
        (b"SK", 24), (b"SM", 27), (b"ST", 25), (b"SV", 28), (b"TL", 23), (b"TN", 24),
        (b"TR", 26), (b"UA", 29), (b"VA", 22), (b"VG", 24), (b"XK", 20),
    ];
    LENGTHS
        .iter()
        .find(|(code, _)| code.as_slice() == country)
        .map(|(_, len)| *len)
}

/// `AAA-GG-SSSS` (or spaces): area not 000, 666 or 9xx; group not 00; serial not 0000.
fn ssn(text: &[u8]) -> bool {
    let (Some(area), Some(group), Some(serial)) = (text.get(0..3), text.get(4..6), text.get(7..11))
    else {
        return false;
    };
    area != b"000" && area != b"666" && area[0] != b'9' && group != b"00" && serial != b"0000"
}

/// Octets ≤ 255, and not part of a longer dotted run (`127.0.0.1.5`, `v127.0.0.1` is cut by `\b`).
fn ipv4(value: &[u8], range: &Range<usize>) -> bool {
    let Some(text) = value.get(range.clone()) else {
        return false;
    };
    let octets_ok = text.split(|&b| b == b'.').all(|octet| {
        octet
            .iter()
            .fold(0u32, |n, &b| n * 10 + u32::from(b.wrapping_sub(b'0')))
            <= 255
    });
    let dotted_before = range.start >= 2
        && value.get(range.start - 1) == Some(&b'.')
        && value.get(range.start - 2).is_some_and(u8::is_ascii_digit);
    octets_ok && !dotted_before && !dotted_digit_after(value, range.end)
}

/// Parses as an address, holds a hex digit (not a bare `::`), and is not glued to a word,
/// another colon group or a dotted tail.
fn ipv6(value: &[u8], range: &Range<usize>) -> bool {
    let Some(text) = value.get(range.clone()) else {
        return false;
    };
    let glued = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b':';
    let before = range
        .start
        .checked_sub(1)
        .and_then(|i| value.get(i))
        .is_some_and(|b| glued(b) || *b == b'.');
    let after = value.get(range.end).is_some_and(glued) || dotted_digit_after(value, range.end);
    !before
        && !after
        && text.iter().any(u8::is_ascii_hexdigit)
        && std::str::from_utf8(text)
            .ok()
            .is_some_and(|s| Ipv6Addr::from_str(s).is_ok())
}

/// True when `value[end..]` starts with `.` and a digit: the candidate is cut from a longer
/// dotted number.
fn dotted_digit_after(value: &[u8], end: usize) -> bool {
    value.get(end) == Some(&b'.') && value.get(end + 1).is_some_and(u8::is_ascii_digit)
}

/// The header (first segment) must base64url-decode to a JSON object: its first and last
/// non-blank decoded bytes are `{` and `}`. Decoded on the fly, without allocating.
fn jwt_header(text: &[u8]) -> bool {
    let header = text.split(|&b| b == b'.').next().unwrap_or_default();
    if header.len() % 4 == 1 {
        return false;
    }
    let (mut first, mut last) = (None, None);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in header {
        let six = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return false,
        };
        acc = (acc << 6) | u32::from(six);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            let byte = (acc >> bits) as u8;
            acc &= (1 << bits) - 1;
            if !byte.is_ascii_whitespace() {
                first.get_or_insert(byte);
                last = Some(byte);
            }
        }
    }
    first == Some(b'{') && last == Some(b'}')
}

/// The end of the `-----END <label>-----` line matching the BEGIN line at `begin`, or the end
/// of the value when there is none (fail closed).
fn pem_end(value: &[u8], begin: &Range<usize>) -> usize {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let label = value
        .get(begin.start + BEGIN.len()..begin.end.saturating_sub(5))
        .unwrap_or_default();
    let mut end_line = Vec::with_capacity(label.len() + 14);
    end_line.extend_from_slice(b"-----END ");
    end_line.extend_from_slice(label);
    end_line.extend_from_slice(b"-----");
    let rest = value.get(begin.end..).unwrap_or_default();
    match memchr::memmem::find(rest, &end_line) {
        Some(i) => begin.end + i + end_line.len(),
        None => value.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Scanner {
        Scanner::new(&Detector::ALL)
    }

    /// The detected (detector, text) pairs in `value`, all detectors on.
    fn found(value: &str) -> Vec<(Detector, String)> {
        found_bytes(&all(), value.as_bytes())
    }

    fn found_bytes(scanner: &Scanner, value: &[u8]) -> Vec<(Detector, String)> {
        let mut out = Vec::new();
        scanner.find(value, &mut out);
        out.iter()
            .map(|f| {
                (
                    f.detector,
                    String::from_utf8_lossy(&value[f.range.clone()]).into_owned(),
                )
            })
            .collect()
    }

    fn one(detector: Detector, text: &str) -> Vec<(Detector, String)> {
        vec![(detector, text.to_owned())]
    }

    #[test]
    fn names_match_serde_and_groups_parse() {
        for d in Detector::ALL {
            let json = serde_json::to_string(&d).expect("serialises");
            assert_eq!(json, format!("\"{}\"", d.name()));
            assert_eq!(Detector::parse_group(d.name()), Some(vec![d]));
        }
        assert_eq!(Detector::parse_group("all"), Some(Detector::ALL.to_vec()));
        assert_eq!(
            Detector::parse_group("pii"),
            Some(vec![
                Detector::CreditCard,
                Detector::Iban,
                Detector::Ssn,
                Detector::Email,
                Detector::Phone,
                Detector::Ipv4,
                Detector::Ipv6
            ])
        );
        let secrets = Detector::parse_group("secrets").expect("a group");
        assert_eq!(secrets.len(), 6);
        assert!(secrets.iter().all(|d| d.is_secret()));
        assert_eq!(Detector::parse_group("credit-card"), None);
        assert_eq!(Detector::parse_group(""), None);
    }

    #[test]
    fn every_subset_builds() {
        assert!(Scanner::new(&[]).is_empty());
        let mut out = Vec::new();
        Scanner::new(&[]).find(b"4111111111111111", &mut out);
        assert!(out.is_empty());
        for d in Detector::ALL {
            assert!(!Scanner::new(&[d]).is_empty());
        }
        let scanner: Box<dyn Send + Sync> = Box::new(all());
        drop(scanner);
    }

    #[test]
    fn only_enabled_detectors_report() {
        let scanner = Scanner::new(&[Detector::Email]);
        assert_eq!(
            found_bytes(&scanner, b"4111111111111111 alice@example.com"),
            one(Detector::Email, "alice@example.com")
        );
        let scanner = Scanner::new(&[Detector::CreditCard]);
        assert_eq!(
            found_bytes(&scanner, b"alice@example.com 4111111111111111"),
            one(Detector::CreditCard, "4111111111111111")
        );
    }

    #[test]
    fn credit_cards_pass_luhn() {
        for card in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5500000000000004",
            "378282246310005",
            "3782 822463 10005",
            "4111111111111111",
        ] {
            assert_eq!(found(card), one(Detector::CreditCard, card), "{card}");
            assert_eq!(
                found(&format!("card: {card}, thanks")),
                one(Detector::CreditCard, card),
                "{card}"
            );
        }
        for not_card in [
            "4111111111111112",
            "4111 1111 1111 1112",
            "0000000000000000",
            "12345678901234567890123",
            "550e8400-e29b-41d4-a716-446655440000",
            "4166-446655440000",
            "411111111111",
        ] {
            assert_eq!(found(not_card), vec![], "{not_card}");
        }
    }

    #[test]
    fn letters_glued_on_do_not_hide_values() {
        for (value, detector, text) in [
            (
                "x4111111111111111x",
                Detector::CreditCard,
                "4111111111111111",
            ),
            (
                "id4111111111111111z",
                Detector::CreditCard,
                "4111111111111111",
            ),
            (
                "x4111111111111111",
                Detector::CreditCard,
                "4111111111111111",
            ),
            (
                "card4111-1111-1111-1111end",
                Detector::CreditCard,
                "4111-1111-1111-1111",
            ),
            (
                "é4111 1111 1111 1111é",
                Detector::CreditCard,
                "4111 1111 1111 1111",
            ),
            ("a123-45-6789b", Detector::Ssn, "123-45-6789"),
            ("ssn123 45 6789x", Detector::Ssn, "123 45 6789"),
            (
                "xDE89370400440532013000x",
                Detector::Iban,
                "DE89370400440532013000",
            ),
            (
                "XDE89370400440532013000X",
                Detector::Iban,
                "DE89370400440532013000",
            ),
            (
                "ibanGB82 WEST 1234 5698 7654 32Z",
                Detector::Iban,
                "GB82 WEST 1234 5698 7654 32",
            ),
            ("alice@example.com1", Detector::Email, "alice@example.com"),
        ] {
            assert_eq!(found(value), one(detector, text), "{value}");
        }
        // Letters glued on are no reason to mask an invalid look-alike.
        for not_found in [
            "x4111111111111112x",
            "x4111 1111 1111 1112x",
            "a000-12-3456b",
            "a666-01-2345b",
            "xDE89370400440532013001x",
            "XGB82WEST12345698765433Y",
        ] {
            assert_eq!(found(not_found), vec![], "{not_found}");
        }
        // A glued letter that starts another value: an invalid card gives way to the email,
        // which is found whole, from where the rejected candidate started.
        assert_eq!(
            found("x4111111111111112@example.com"),
            one(Detector::Email, "x4111111111111112@example.com")
        );
        // Values glued to each other are all found.
        assert_eq!(
            found("4111111111111111x5500000000000004"),
            vec![
                (Detector::CreditCard, "4111111111111111".to_owned()),
                (Detector::CreditCard, "5500000000000004".to_owned())
            ]
        );
    }

    #[test]
    fn digits_glued_on_make_a_longer_run_not_a_card() {
        // A run of more than 19 digits is not searched for a card inside it (see `unglue`):
        // nearly every such run holds a Luhn-valid window, and long numbers are common.
        for run in [
            "41111111111111111111",
            "04111111111111111110",
            "0.28571428571428571429",
            "x041111111111111111x",
        ] {
            assert_eq!(found(run), vec![], "{run}");
        }
        // Shorter runs are judged whole, as always: this 17-digit run fails Luhn.
        assert_eq!(found("41111111111111110"), vec![]);
        // An invalid grouped candidate does not hide a valid card that starts inside it: the
        // scan goes on one byte after a rejected candidate's start, never from its end.
        assert_eq!(
            found("1234 4111 1111 1111 1111"),
            one(Detector::CreditCard, "4111 1111 1111 1111")
        );
        // A digit glued to an SSN or a grouped card breaks the shape.
        assert_eq!(found("1123-45-6789"), vec![]);
        assert_eq!(found("123-45-67891"), vec![]);
        assert_eq!(found("4111 1111 1111 11111 2"), vec![]);
    }

    #[test]
    fn ibans_pass_mod97() {
        for iban in ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"] {
            assert_eq!(found(iban), one(Detector::Iban, iban));
            assert_eq!(found(&format!("IBAN {iban}.")), one(Detector::Iban, iban));
        }
        for not_iban in [
            "GB82WEST12345698765433",
            "GB82 WEST 1234 5698 7654 33",
            "XX00",
            "XX00WEST123456987654320000000000000",
        ] {
            assert_eq!(found(not_iban), vec![], "{not_iban}");
        }
        // Too long for an IBAN as a whole, but a valid one of the country's length with
        // characters glued after it: the IBAN is found.
        assert_eq!(
            found("GB82WEST123456987654320000000000000"),
            one(Detector::Iban, "GB82WEST12345698765432")
        );
    }

    #[test]
    fn ssns_reject_invalid_parts() {
        assert_eq!(found("123-45-6789"), one(Detector::Ssn, "123-45-6789"));
        assert_eq!(found("ssn 123 45 6789"), one(Detector::Ssn, "123 45 6789"));
        for not_ssn in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123456789",
            "123-45 6789",
        ] {
            assert_eq!(found(not_ssn), vec![], "{not_ssn}");
        }
    }

    #[test]
    fn emails_in_text_and_json() {
        assert_eq!(
            found("contact alice@example.com today"),
            one(Detector::Email, "alice@example.com")
        );
        assert_eq!(
            found(r#"{"email":"alice@example.com"}"#),
            one(Detector::Email, "alice@example.com")
        );
        assert_eq!(
            found("first.last+tag@mail.example.co.uk."),
            one(Detector::Email, "first.last+tag@mail.example.co.uk")
        );
        for not_email in [
            "alice@",
            "@example.com",
            "alice@localhost",
            "alice@example.c",
        ] {
            assert_eq!(found(not_email), vec![], "{not_email}");
        }
    }

    #[test]
    fn phones_need_a_plus_or_separators() {
        for phone in [
            "+1 555 010 0123",
            "+44 20 7946 0958",
            "+41-44-668-18-00",
            "+15550100123",
            "+1 (555) 010-0123",
            "(555) 234-5678",
            "555-234-5678",
            "555.234.5678",
        ] {
            assert_eq!(found(phone), one(Detector::Phone, phone), "{phone}");
            assert_eq!(
                found(&format!("call {phone} now")),
                one(Detector::Phone, phone),
                "{phone}"
            );
        }
        for not_phone in ["5552345678", "+1234567", "a+15550100123", "555-123-4567"] {
            assert_eq!(found(not_phone), vec![], "{not_phone}");
        }
    }

    #[test]
    fn cards_and_ssns_are_not_phones() {
        assert_eq!(
            found("4111-1111-1111-1111"),
            one(Detector::CreditCard, "4111-1111-1111-1111")
        );
        assert_eq!(found("123-45-6789"), one(Detector::Ssn, "123-45-6789"));
    }

    #[test]
    fn ipv4_dotted_quads_only() {
        assert_eq!(found("127.0.0.1"), one(Detector::Ipv4, "127.0.0.1"));
        assert_eq!(
            found("from 127.0.0.1:5432,"),
            one(Detector::Ipv4, "127.0.0.1")
        );
        assert_eq!(
            found("255.255.255.255"),
            one(Detector::Ipv4, "255.255.255.255")
        );
        for not_ip in [
            "1.2.3",
            "10.2.3",
            "127.0.0.1.5",
            "127.0.0.256",
            "127.0.0.1000",
            "v127.0.0.1x",
            "10:42:44",
            "1234.50",
        ] {
            assert_eq!(found(not_ip), vec![], "{not_ip}");
        }
    }

    #[test]
    fn ipv6_validated_by_std() {
        for ip in [
            // Loopback only, in every notation the detector must handle.
            "::1",
            "0::1",
            "0:0::0:1",
            "0000:0000:0000:0000:0000:0000:0000:0001",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(found(ip), one(Detector::Ipv6, ip), "{ip}");
            assert_eq!(
                found(&format!("addr [{ip}] ok")),
                one(Detector::Ipv6, ip),
                "{ip}"
            );
            assert_eq!(
                found(&format!("from {ip}.")),
                one(Detector::Ipv6, ip),
                "{ip}"
            );
        }
        for not_ip in [
            "10:42:44",
            "2026-11-28 10:42:44",
            "00:1a:2b:3c:4d:5e",
            "std::net::Ipv6Addr",
            "::",
            "1::2::3",
            "12345::1",
            "a:b:c:d:e:f:1:2:3",
        ] {
            assert_eq!(found(not_ip), vec![], "{not_ip}");
        }
    }

    #[test]
    fn prefixed_secrets() {
        assert_eq!(
            found("key=AKIAIOSFODNN7EXAMPLE;"),
            one(Detector::AwsAccessKey, "AKIAIOSFODNN7EXAMPLE")
        );
        assert_eq!(found("AKIAIOSFODNN7EXAMPLE1"), vec![]);
        let ghp = format!("ghp_{}", "a1B2c3D4e5".repeat(3) + "F6g7H8");
        assert_eq!(
            found(&format!("token {ghp}")),
            one(Detector::GithubToken, &ghp)
        );
        assert_eq!(found(&format!("{ghp}x")), vec![]);
        let pat = format!("github_pat_{}", "11ABCDEFG0_abcdefghijklmnop");
        assert_eq!(found(&pat), one(Detector::GithubToken, &pat));
        let slack = "xoxb-123456789012-abcdefABCDEF";
        assert_eq!(found(slack), one(Detector::SlackToken, slack));
        let too_long = format!("github_pat_{}", "a".repeat(256));
        assert_eq!(found(&too_long), vec![]);
        assert_eq!(found("xoxq-123456789012"), vec![]);
        let stripe = "sk_live_0123456789abcdefGHIJ";
        assert_eq!(found(stripe), one(Detector::StripeKey, stripe));
        assert_eq!(found("sk_test_0123456789abcdefGHIJ"), vec![]);
        assert_eq!(found("sk_live_short"), vec![]);
    }

    #[test]
    fn jwt_header_is_json() {
        // {"alg":"HS256","typ":"JWT"} . {"sub":"1234567890"} . signature
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.\
                   SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(found(&format!("Bearer {jwt}")), one(Detector::Jwt, jwt));
        // Header decodes to `{"a` only: not a JSON object.
        assert_eq!(found("eyJh.eyJzdWIi.SflKxwRJSMeKKF2Q"), vec![]);
        assert_eq!(found("eyJhbGciOiJIUzI1NiJ9.eyJzdWIi.short"), vec![]);
    }

    #[test]
    fn pem_private_key_whole_block() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\n\
                   MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n\
                   KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n\
                   -----END RSA PRIVATE KEY-----";
        let value = format!("key:\n{key}\ntrailer 4111111111111111");
        assert_eq!(
            found(&value),
            vec![
                (Detector::PrivateKey, key.to_owned()),
                (Detector::CreditCard, "4111111111111111".to_owned())
            ]
        );
        for label in ["", "EC ", "OPENSSH ", "ENCRYPTED "] {
            let key = format!(
                "-----BEGIN {label}PRIVATE KEY-----\nAAAA\n-----END {label}PRIVATE KEY-----"
            );
            assert_eq!(found(&key), one(Detector::PrivateKey, &key));
        }
        // No END line: everything after BEGIN is masked.
        let cut =
            "x -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC 4111111111111111";
        assert_eq!(found(cut), one(Detector::PrivateKey, &cut[2..]));
        assert_eq!(found("-----BEGIN PUBLIC KEY-----\nAAAA"), vec![]);
    }

    #[test]
    fn non_ascii_text_around_matches() {
        assert_eq!(
            found("José aus Zürich: josé@bücher.example, 4111 1111 1111 1111 — ok"),
            vec![
                (Detector::Email, "josé@bücher.example".to_owned()),
                (Detector::CreditCard, "4111 1111 1111 1111".to_owned())
            ]
        );
    }

    #[test]
    fn matches_are_ordered_and_disjoint() {
        let value = "alice@example.com 123-45-6789 4111111111111111 127.0.0.1 ::1 \
                     +44 20 7946 0958 AKIAIOSFODNN7EXAMPLE DE89370400440532013000";
        let mut out = Vec::new();
        all().find(value.as_bytes(), &mut out);
        let detectors: Vec<Detector> = out.iter().map(|f| f.detector).collect();
        assert_eq!(
            detectors,
            vec![
                Detector::Email,
                Detector::Ssn,
                Detector::CreditCard,
                Detector::Ipv4,
                Detector::Ipv6,
                Detector::Phone,
                Detector::AwsAccessKey,
                Detector::Iban
            ]
        );
        for pair in out.windows(2) {
            assert!(pair[0].range.end <= pair[1].range.start, "{pair:?}");
        }
        // `find` appends: earlier content of `out` is kept.
        let before = out.len();
        all().find(b"127.0.0.1", &mut out);
        assert_eq!(out.len(), before + 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let scanner = all();
        let mut out = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"0123456789 -.:@+_()AKIAeyJxoxghp\xff\xfe\xc3\xa9\n-----BEGIN ";
        for len in 0..400 {
            let value: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed.is_multiple_of(3) {
                        (seed >> 8) as u8
                    } else {
                        alphabet[(seed >> 16) as usize % alphabet.len()]
                    }
                })
                .collect();
            out.clear();
            scanner.find(&value, &mut out);
            for f in &out {
                assert!(f.range.start < f.range.end && f.range.end <= value.len());
            }
            for pair in out.windows(2) {
                assert!(pair[0].range.end <= pair[1].range.start);
            }
        }
        for value in [
            &[0xffu8; 64][..],
            b"\xff\xff4111111111111111\xff",
            b"\xc3(127.0.0.1\x80",
            b"-----BEGIN PRIVATE KEY-----",
            b"-----BEGIN  PRIVATE KEY-----",
            b"::",
            b"",
        ] {
            out.clear();
            scanner.find(value, &mut out);
        }
        assert_eq!(
            found_bytes(&scanner, b"\xff\xfe4111111111111111\xff"),
            one(Detector::CreditCard, "4111111111111111")
        );
    }
}
