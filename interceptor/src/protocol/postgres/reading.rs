//! How the server reads text: the session settings the gateway pins.
//!
//! Why this exists: the server's scanner depends on session settings. With
//! `standard_conforming_strings = off`, `\'` inside `'…'` is an escaped quote; with a
//! client-only multi-byte `client_encoding` (SJIS, BIG5, GBK, …) a 0x5C byte can be the second
//! half of a character rather than a backslash. Either way the server would split a text into
//! different statements than the gateway's parsers, and policy would judge something other
//! than what runs.
//!
//! The gateway therefore keeps every session in the one state its parsers read for:
//! - start-up: `client_encoding=UTF8` and `standard_conforming_strings=on` are sent upstream
//!   whatever the client asked (start-up values outrank role and database defaults); a client
//!   asking for a client-only encoding, or passing any pinned setting through `options`, is
//!   refused with a clear error;
//! - statements: `SET`/`RESET`/`set_config` of a pinned setting are refused by policy, whatever
//!   the rules say (`policy::pg_grammar`);
//! - backstop: the server reports both settings (ParameterStatus) at start-up and whenever
//!   they change; a report of any other value ends the session ([`check_status`]);
//! - pipelines: code the server runs (a trigger, a view's function, a procedure) can still
//!   change a setting, and the server reports that only just before ReadyForQuery, after it
//!   may already have parsed text pipelined behind it. A text whose reading depends on the
//!   settings ([`depends_on_settings`]) is therefore forwarded only once everything executed
//!   before it has been answered (its segment's ParameterStatus and ReadyForQuery seen); in
//!   the same Sync segment as an execution it is refused, since the server answers nothing
//!   of a segment before its Sync.
//!
//! `backslash_quote` and `escape_string_warning` are pinned against statements too; the server
//! does not report them, but with UTF-8 and standard strings neither changes where a string
//! ends (`backslash_quote = off` only makes the server reject `\'` inside `E'…'`).

/// Whether the server could read `text` differently under other values of the pinned
/// settings. Only a backslash (string escapes) and bytes above 0x7F (multi-byte characters)
/// read differently: every encoding the server accepts from a client reads ASCII as ASCII.
pub fn depends_on_settings(text: &str) -> bool {
    text.bytes().any(|b| b == b'\\' || !b.is_ascii())
}

/// The values the gateway's parsers assume, as the server reports them.
pub const PINNED: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
];

/// Settings a client may not pass at start-up (directly or in `options`).
const PINNED_NAMES: &[&str] = &[
    "client_encoding",
    "standard_conforming_strings",
    "backslash_quote",
    "escape_string_warning",
];

/// Client-only encodings: multi-byte, with trailing bytes in the ASCII range. Text in them is
/// not text in UTF-8, so the client's bytes would not mean what the gateway read.
const CLIENT_ONLY_ENCODINGS: &[&str] = &[
    "sjis",
    "shiftjis",
    "shiftjis2004",
    "mskanji",
    "win932",
    "windows932",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "gb18030",
    "uhc",
    "win949",
    "windows949",
    "johab",
];

/// Why a session's start-up was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unpinnable(pub String);

/// Encoding names the way the server compares them: case and punctuation do not count.
fn clean_encoding(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Rewrites a client's start-up parameters so the session starts in the pinned state.
pub fn pin_startup(params: &mut Vec<(String, String)>) -> Result<(), Unpinnable> {
    for (name, value) in params.iter() {
        let lower = name.to_ascii_lowercase();
        if lower == "client_encoding" {
            if CLIENT_ONLY_ENCODINGS.contains(&clean_encoding(value).as_str()) {
                return Err(Unpinnable(format!(
                    "client_encoding {value:?} is not supported through the gateway: it reads \
                     statements as UTF-8 (set PGCLIENTENCODING=UTF8 or the driver's encoding)"
                )));
            }
        } else if PINNED_NAMES.contains(&lower.as_str()) {
            if !(lower == "standard_conforming_strings" && value.eq_ignore_ascii_case("on")) {
                return Err(Unpinnable(format!(
                    "{name}={value} is pinned by the gateway and may not be set at start-up"
                )));
            }
        } else if lower == "options" {
            if let Some(setting) = options_settings(value)
                .into_iter()
                .find(|s| PINNED_NAMES.contains(&s.as_str()))
            {
                return Err(Unpinnable(format!(
                    "options may not set {setting}: the gateway pins it"
                )));
            }
        }
    }
    params.retain(|(name, _)| {
        let lower = name.to_ascii_lowercase();
        lower != "client_encoding" && lower != "standard_conforming_strings"
    });
    for (name, value) in PINNED {
        params.push(((*name).to_owned(), (*value).to_owned()));
    }
    Ok(())
}

/// The settings named by a start-up `options` string: `-c name=value`, `-cname=value` and
/// `--name=value`, split the way the server splits it (whitespace, `\` escapes the next byte),
/// with `-` in names read as `_` as the server does. Other switches name no setting we pin.
fn options_settings(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut iter = words.iter().peekable();
    while let Some(w) = iter.next() {
        let assignment = if let Some(rest) = w.strip_prefix("--") {
            Some(rest.to_owned())
        } else if w == "-c" {
            iter.next().cloned()
        } else {
            w.strip_prefix("-c").map(str::to_owned)
        };
        if let Some(a) = assignment {
            let name = a.split('=').next().unwrap_or_default().trim();
            settings.push(name.replace('-', "_").to_ascii_lowercase());
        }
    }
    settings
}

/// Checks a ParameterStatus ('S') body from the server against the pinned values. `Err` names
/// the setting that left its pinned value: the session must end.
pub fn check_status(body: &[u8]) -> Result<(), String> {
    let mut parts = body.split(|b| *b == 0);
    let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
        return Err("a malformed ParameterStatus".to_owned());
    };
    for (pinned, expected) in PINNED {
        if name.eq_ignore_ascii_case(pinned.as_bytes())
            && !value.eq_ignore_ascii_case(expected.as_bytes())
        {
            return Err(format!(
                "the server reports {pinned} = {}, not {expected}: the gateway can no longer \
                 read statements as the server does",
                String::from_utf8_lossy(value)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn startup_is_pinned() {
        let mut p = params(&[
            ("user", "agent"),
            ("client_encoding", "SQL_ASCII"),
            ("application_name", "x"),
        ]);
        pin_startup(&mut p).expect("pinnable");
        assert!(p.contains(&("client_encoding".into(), "UTF8".into())));
        assert!(p.contains(&("standard_conforming_strings".into(), "on".into())));
        assert!(!p.contains(&("client_encoding".into(), "SQL_ASCII".into())));
        assert!(p.contains(&("application_name".into(), "x".into())));
    }

    #[test]
    fn client_only_encodings_and_pinned_options_are_refused() {
        for bad in [
            vec![("client_encoding", "SJIS")],
            vec![("client_encoding", "Shift_JIS")],
            vec![("client_encoding", "big5")],
            vec![("client_encoding", "GB-18030")],
            vec![("standard_conforming_strings", "off")],
            vec![("backslash_quote", "on")],
            vec![("options", "-c standard_conforming_strings=off")],
            vec![("options", "-cclient_encoding=SJIS")],
            vec![("options", "--standard-conforming-strings=off")],
            vec![("options", "-c search_path=x -c\\ client_encoding=BIG5")],
            vec![("options", "-c Client_Encoding=GBK")],
        ] {
            let mut p = params(&bad);
            assert!(pin_startup(&mut p).is_err(), "{bad:?}");
        }
        let mut ok = params(&[("options", "-c search_path=app -c statement_timeout=5s")]);
        assert!(pin_startup(&mut ok).is_ok());
    }

    #[test]
    fn status_reports_are_checked() {
        assert!(check_status(b"client_encoding\0UTF8\0").is_ok());
        assert!(check_status(b"standard_conforming_strings\0on\0").is_ok());
        assert!(check_status(b"TimeZone\0UTC\0").is_ok());
        assert!(check_status(b"client_encoding\0SJIS\0").is_err());
        assert!(check_status(b"standard_conforming_strings\0off\0").is_err());
        assert!(check_status(b"garbage").is_err());
    }
}
