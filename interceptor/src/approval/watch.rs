//! `interceptor approvals watch`: follow new requests as they arrive.
//!
//! On a terminal it is a line-based prompt (so it works the same in a plain terminal and in
//! tmux): each new request is shown — who, which run, which target, the statement with SQL
//! keywords highlighted — and the approver answers approve, approve for the run, deny (with a
//! reason) or skip. Without a terminal it streams one JSON object per new request, for scripts.

use std::{
    collections::HashSet,
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    time::Duration,
};

use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::{
    control::{self, Answer, Call, ControlError},
    Request, Scope,
};

/// How often the sockets are asked for new requests.
const POLL: Duration = Duration::from_millis(500);

/// Follows the `explicit` socket, or the configured one and every `exec` run's beside it (looked
/// up again on each poll, so runs started later are seen too).
/// Refused everywhere (the caller is not an approver) is an error of kind `PermissionDenied`;
/// sockets that fail otherwise are warned about once each, and watching goes on.
pub async fn run(
    explicit: Option<PathBuf>,
    configured: PathBuf,
    group: String,
) -> std::io::Result<()> {
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut seen = HashSet::new();
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    if interactive {
        println!("watching for approval requests (Ctrl-C to stop)");
    }
    // Problems are said once each, not at every poll.
    let mut reported = HashSet::new();
    let mut said_waiting = false;
    loop {
        let sockets = match &explicit {
            Some(s) => vec![s.clone()],
            None => control::sockets(&configured),
        };
        let Polled {
            requests,
            answered,
            problems,
        } = pending(&sockets, &group).await;
        if !answered {
            // Every socket refused the caller: watching would show nothing, ever.
            if let Some(e) = problems.iter().find(|e| {
                matches!(
                    e,
                    ControlError::PermissionDenied { .. } | ControlError::NotPermitted(_)
                )
            }) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    e.to_string(),
                ));
            }
            if !said_waiting {
                eprintln!("no interceptor daemon answers yet; waiting for one to start");
                said_waiting = true;
            }
        } else {
            said_waiting = false;
        }
        for problem in problems.iter().filter(|e| !e.is_stale()) {
            if reported.insert(problem.to_string()) {
                eprintln!("warning: {problem}");
            }
        }
        for (socket, request) in requests {
            if !seen.insert(request.id.clone()) {
                continue;
            }
            if !interactive {
                println!(
                    "{}",
                    serde_json::to_string(&request).map_err(std::io::Error::other)?
                );
                std::io::stdout().flush()?;
                continue;
            }
            show(&request);
            let call = loop {
                print!("[a]pprove, approve for the [r]un, [d]eny, [s]kip? ");
                std::io::stdout().flush()?;
                let Some(answer) = input.next_line().await? else {
                    return Ok(());
                };
                match answer.trim() {
                    "a" => {
                        break Some(Call::Approve {
                            id: request.id.clone(),
                            scope: Scope::Once,
                            reason: None,
                        })
                    }
                    "r" => {
                        break Some(Call::Approve {
                            id: request.id.clone(),
                            scope: Scope::Run,
                            reason: None,
                        })
                    }
                    "d" => {
                        print!("reason: ");
                        std::io::stdout().flush()?;
                        let reason = input.next_line().await?.unwrap_or_default();
                        break Some(Call::Deny {
                            id: request.id.clone(),
                            reason,
                        });
                    }
                    "s" | "" => break None,
                    _ => continue,
                }
            };
            if let Some(call) = call {
                match control::call(&socket, &call).await {
                    Ok(Answer::Request(r)) => println!("{}: {:?}\n", r.id, r.status),
                    Ok(Answer::Error(e)) => println!("refused: {e}\n"),
                    Ok(Answer::Requests(_) | Answer::Reloaded(_) | Answer::Status(_)) => {}
                    Err(e) => println!("error: {e}\n"),
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One poll of every socket.
struct Polled {
    /// Pending requests of every socket that answered, oldest first.
    requests: Vec<(PathBuf, Request)>,
    /// Some socket answered.
    answered: bool,
    /// Why the others did not.
    problems: Vec<ControlError>,
}

async fn pending(sockets: &[PathBuf], group: &str) -> Polled {
    let mut polled = Polled {
        requests: Vec::new(),
        answered: false,
        problems: Vec::new(),
    };
    for socket in sockets {
        match control::call(socket, &Call::List).await {
            Ok(Answer::Requests(list)) => {
                polled.answered = true;
                polled
                    .requests
                    .extend(list.into_iter().map(|r| (socket.clone(), r)));
            }
            Ok(Answer::Error(e)) => polled.problems.push(ControlError::from_answer(e)),
            Ok(_) => polled.problems.push(ControlError::Refused(
                "unexpected answer to list".to_owned(),
            )),
            Err(e) => polled
                .problems
                .push(ControlError::from_io(socket, group, e)),
        }
    }
    polled
        .requests
        .sort_by(|a, b| a.1.requested_at.cmp(&b.1.requested_at));
    polled
}

fn show(r: &Request) {
    println!(
        "\n\x1b[1m{}\x1b[0m  {}\n  who:    {} (uid {}, pid {}) {}\n  run:    {}\n  target: {}   rule: {}\n  sql:    {}",
        r.id,
        r.requested_at,
        r.user.as_deref().unwrap_or("?"),
        r.uid,
        r.pid,
        r.exe.as_deref().unwrap_or(""),
        r.run_id.as_deref().unwrap_or("-"),
        r.target.as_deref().unwrap_or("-"),
        r.rule.as_deref().unwrap_or("-"),
        highlight(&r.statement)
    );
}

/// Bold SQL keywords; everything else as written.
fn highlight(sql: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "SELECT",
        "FROM",
        "WHERE",
        "UPDATE",
        "SET",
        "INSERT",
        "INTO",
        "VALUES",
        "DELETE",
        "DROP",
        "TABLE",
        "CREATE",
        "ALTER",
        "AND",
        "OR",
        "JOIN",
        "ON",
        "WITH",
        "RETURNING",
        "MERGE",
        "COPY",
        "TRUNCATE",
        "GRANT",
        "REVOKE",
    ];
    sql.split(' ')
        .map(|word| {
            if KEYWORDS.contains(&word.to_ascii_uppercase().as_str()) {
                format!("\x1b[1;36m{word}\x1b[0m")
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
