use super::parse;

fn programs(line: &str) -> Vec<String> {
    let parsed = parse(line);
    assert_eq!(parsed.opaque, None, "{line:?} should be readable");
    parsed.programs
}

fn opaque(line: &str) -> String {
    parse(line)
        .opaque
        .unwrap_or_else(|| panic!("{line:?} should be opaque"))
}

#[test]
fn pipelines_lists_and_assignments_name_every_program() {
    assert_eq!(programs("ls -l /srv"), ["ls"]);
    assert_eq!(
        programs("ls -l | grep x && rm -rf /srv; echo done &"),
        ["ls", "grep", "rm", "echo"]
    );
    assert_eq!(programs("LANG=C sort file || true"), ["sort", "true"]);
    assert_eq!(programs("/bin/rm -rf /srv"), ["/bin/rm"]);
    assert_eq!(programs("cat a |& tee b"), ["cat", "tee"]);
}

#[test]
fn quotes_and_escapes_are_removed_the_way_the_shell_does() {
    assert_eq!(programs("'r''m' -rf /"), ["rm"]);
    assert_eq!(programs(r#""r"m x"#), ["rm"]);
    assert_eq!(programs(r"r\m x"), ["rm"]);
    assert_eq!(programs("echo 'a; rm -rf /'"), ["echo"]);
    assert_eq!(programs(r#"echo "a | b" \; c"#), ["echo"]);
    // A quoted assignment is a word, so it is the program.
    assert_eq!(programs("'A=b' x"), ["A=b"]);
}

#[test]
fn wrappers_name_what_they_run() {
    assert_eq!(
        programs("sudo -u postgres psql -c 'select 1'"),
        ["sudo", "psql"]
    );
    assert_eq!(programs("env -i A=1 B=2 rm x"), ["env", "rm"]);
    assert_eq!(programs("timeout -s KILL 10 rm x"), ["timeout", "rm"]);
    assert_eq!(
        programs("nice -n 5 nohup tar czf x.tgz /srv"),
        ["nice", "nohup", "tar"]
    );
    assert_eq!(
        programs("find /srv -name '*.log' -exec rm {} ;"),
        ["find", "rm"]
    );
    assert_eq!(programs("ls | xargs -n 1 rm"), ["ls", "xargs", "rm"]);
    assert_eq!(
        programs("sh -c 'cd /srv && rm -rf data'"),
        ["sh", "cd", "rm"]
    );
    assert_eq!(programs("bash -lc \"shred x\""), ["bash", "shred"]);
}

#[test]
fn redirections_name_their_files() {
    let line = parse("echo x > /etc/passwd 2>&1; sort < in >> out 2> err");
    assert_eq!(line.opaque, None);
    assert_eq!(line.programs, ["echo", "sort"]);
    assert_eq!(line.redirections, ["/etc/passwd", "in", "out", "err"]);
    assert_eq!(parse("cat x &> all").redirections, ["all"]);
    // Written files: everything but `<`, and never /dev/null.
    assert_eq!(line.writes, ["/etc/passwd", "out", "err"]);
    assert_eq!(parse("cat x &> all").writes, ["all"]);
    assert!(parse("find / -name x 2>/dev/null").writes.is_empty());
    assert_eq!(parse("cat <> f").writes, ["f"]);
}

#[test]
fn each_simple_command_keeps_its_words_and_wrapped_commands_are_listed_unwrapped() {
    let line = parse("ls -l '/srv/my dir' | sudo -u root rm -rf /srv; find / -exec rm {} ;");
    let words = |c: &[&str]| c.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        line.commands,
        [
            words(&["ls", "-l", "/srv/my dir"]),
            words(&["sudo", "-u", "root", "rm", "-rf", "/srv"]),
            words(&["rm", "-rf", "/srv"]),
            // The unquoted `;` ends the line's command (a shell would want `\;`).
            words(&["find", "/", "-exec", "rm", "{}"]),
            words(&["rm", "{}"]),
        ]
    );
}

#[test]
fn what_the_gateway_cannot_see_through_is_opaque() {
    for line in [
        "echo $(rm -rf /)",
        "echo `id`",
        "echo \"$(id)\"",
        "$CMD -rf /",
        "r* -rf /",
        "eval \"rm -rf /\"",
        "source ./x.sh",
        ". ./x.sh",
        "(rm -rf /)",
        "{ rm -rf /; }",
        "cat <<EOF",
        "diff <(ls a) <(ls b)",
        "sh script.sh",
        "bash",
        "sh -c \"$X\"",
        "env -S 'rm -rf /'",
        "echo 'unterminated",
        "echo x >",
        "echo x \\",
        "sh -c 'sh -c \"sh -c \\\"sh -c \\\\\\\"sh -c \\\\\\\\\\\\\\\"sh -c id\\\\\\\\\\\\\\\"\\\\\\\"\\\"\"'",
    ] {
        opaque(line);
    }
}

#[test]
fn expansions_in_arguments_keep_the_program_known() {
    let line = parse("rm -rf $DIR/*.log");
    assert_eq!(line.opaque, None);
    assert_eq!(line.programs, ["rm"]);
    assert_eq!(programs("echo ${HOME} # rm -rf /"), ["echo"]);
    assert_eq!(programs("echo a{b,c}"), ["echo"]);
}

#[test]
fn empty_lines_run_nothing() {
    assert!(programs("").is_empty());
    assert!(programs("  ;  ").is_empty());
}
