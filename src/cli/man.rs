//! The manual pages: `mailgate(8)` rendered from the clap definitions (clap_mangen), so
//! it never drifts from the binary, and `mailgate.toml(5)`, written by hand beside the
//! shipped configuration. `mailgate manpage [8|5]` prints either; the Debian package
//! installs both.

use clap::CommandFactory;

/// `mailgate.toml(5)`: the configuration file.
pub const MAILGATE_TOML_5: &str = include_str!("../../packaging/man/mailgate.toml.5");

/// What `mailgate(8)` says beyond the flags: files, environment, exit codes, signals.
const TAIL: &str = r#".SH "EXIT STATUS"
0 when the command succeeded; 1 when the operation failed (the daemon could not be
reached, a message was not sent within the wait, a check found problems); 2 for a usage
or configuration error. Run as \fBsendmail\fR, the exit codes are sendmail's: 0
accepted, 64 usage, 65 a bad message or address, 67 a local name that goes nowhere, 75
neither the daemon nor the maildrop could take the message, 78 the aliases file cannot
be used.
.SH SIGNALS
\fBserve\fR stops gracefully on SIGTERM and SIGINT and reloads its configuration on
SIGHUP.
.SH ENVIRONMENT
.TP
\fBMAILGATE_CONFIG\fR
The configuration file, as \fB\-\-config\fR.
.TP
\fBMAILGATE_LOG\fR
The log filter of \fBserve\fR (default \fBinfo\fR; \fBdebug\fR for more).
.TP
\fBNO_COLOR\fR
No colour in the log, even at a terminal.
.SH FILES
.TP
\fI/etc/mailgate/mailgate.toml\fR
The configuration (see \fBmailgate.toml\fR(5)); \fI./config/mailgate.toml\fR is read
first when it exists, and without either the built-in default runs
(\fBmailgate default\-config\fR prints it).
.TP
\fI/var/lib/mailgate/\fR
The store (queue and history), the encrypted secrets, the maildrop of the sendmail
door and the eml outbox of the packaged configuration.
.SH "SEE ALSO"
\fBmailgate.toml\fR(5), \fBsendmail\fR(8), \fBaliases\fR(5),
\fI/usr/share/doc/mailgate/README.md\fR
"#;

/// `mailgate(8)` in roff: the command's name, synopsis, description and global options,
/// then every command with its own synopsis and options, then [`TAIL`].
pub fn mailgate_8() -> String {
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("mailgate {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    out.extend_from_slice(
        b".SH DESCRIPTION\nmailgate takes mail from software on the same machine (plain SMTP on a local \
listener, or \\fBsendmail\\fR), commits it durably, rewrites the sender per the site's rules \
and relays it upstream (Microsoft 365, Outlook.com, Gmail, any submission server) over TLS \
with a password or OAuth2, or through Microsoft Graph, within the mailbox's limits, keeping \
an email history that says what happened to every message.\n",
    );
    let _ = man.render_options_section(&mut out);
    out.extend_from_slice(b".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command(&mut out, sub, "mailgate");
    }
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push_str(TAIL);
    text
}

/// One command (and its own commands) as a `.SS` section: synopsis, about, options.
fn command(out: &mut Vec<u8>, cmd: &clap::Command, parent: &str) {
    let name = format!("{parent} {}", cmd.get_name());
    // The global flags are said once, at the top; --help everywhere goes without saying.
    let own = cmd.clone().bin_name(&name).mut_args(|a| {
        if a.is_global_set() || a.get_id() == "help" {
            a.hide(true)
        } else {
            a
        }
    });
    let man = clap_mangen::Man::new(own.clone());
    let mut synopsis = Vec::new();
    let _ = man.render_synopsis_section(&mut synopsis);
    out.extend_from_slice(format!(".SS \"{}\"\n", name.replace('-', "\\-")).as_bytes());
    // The synopsis without its `.SH SYNOPSIS` heading.
    for line in String::from_utf8_lossy(&synopsis).lines() {
        if !line.starts_with(".SH") {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    let about = cmd
        .get_long_about()
        .or_else(|| cmd.get_about())
        .map(ToString::to_string)
        .unwrap_or_default();
    if !about.is_empty() {
        out.extend_from_slice(format!(".PP\n{}\n", escape(&about)).as_bytes());
    }
    let mut options = Vec::new();
    let has_options = own.get_arguments().any(|a| !a.is_hide_set());
    if has_options {
        let _ = man.render_options_section(&mut options);
        for line in String::from_utf8_lossy(&options).lines() {
            if !line.starts_with(".SH") {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command(out, sub, &name);
    }
}

/// Text for roff: a backslash and a leading dot or quote cannot act as requests.
fn escape(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e").replace('-', "\\-");
            if l.starts_with(['.', '\'']) {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
