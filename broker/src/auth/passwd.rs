//! `fleetmq-broker passwd [-c] [-b] [-D] FILE USERNAME [PASSWORD]`: manages a password file
//! like `mosquitto_passwd`, writing argon2id hashes (m=19456 KiB, t=2, p=1; see
//! [`super::password::ARGON2_M_COST`]).
//!
//! - `-c`: create the file, replacing an existing one; with FILE `-` print the line instead.
//! - `-b`: take the password from the command line (visible in `ps` and shell history).
//! - `-D`: delete the user.
//! - otherwise the password is asked twice on the terminal without echo, or, when standard
//!   input is not a terminal, read as one line from it (so `printf '%s\n' "$PW" | fleetmq-broker
//!   passwd FILE USER` works in scripts without putting the password on the command line).
//!
//! The file is edited in place: other lines, comments and blank lines stay as they are, the
//! user's line is replaced where it was (a duplicate further down is dropped) or appended.
//! The new file is written to a temporary file next to it and renamed over it, so the broker's
//! file watcher never sees half a file; a new file gets mode 0600, an existing one keeps its
//! mode and owner. A symlink (Kubernetes' `..data` layout) is followed and the target replaced.

use std::fs;
use std::io::{IsTerminal as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use super::password::{self, HashError, PasswordFile};

/// The parsed command line of `passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdArgs {
    /// `-c`: create or overwrite the file.
    pub create: bool,
    /// `-b`: the password is the third argument.
    pub batch: bool,
    /// `-D`: delete the user.
    pub delete: bool,
    /// The password file (`-` with `-c`: standard output).
    pub file: PathBuf,
    /// The user to add, update or delete.
    pub username: String,
    /// The password (only with `-b`).
    pub password: Option<String>,
}

/// Why `passwd` failed. No variant carries a password.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// Conflicting or missing options.
    #[error("{0}")]
    Usage(&'static str),
    /// The username cannot be stored.
    #[error("invalid username {username:?}: {reason}")]
    BadUsername {
        /// The username as given.
        username: String,
        /// Why.
        reason: &'static str,
    },
    /// The file does not exist and `-c` was not given.
    #[error("{0}: no such file (use -c to create it)")]
    MissingFile(String),
    /// `-D` for a user that is not in the file.
    #[error("user {username:?} is not in {path}")]
    NoSuchUser {
        /// The username.
        username: String,
        /// The file.
        path: String,
    },
    /// The two passwords typed differ.
    #[error("passwords do not match")]
    Mismatch,
    /// An empty password.
    #[error("empty password")]
    EmptyPassword,
    /// A password MQTT cannot carry.
    #[error("password is longer than 65535 bytes (the MQTT limit)")]
    PasswordTooLong,
    /// Reading the password from the terminal or standard input failed.
    #[error("reading the password: {0}")]
    ReadPassword(#[source] std::io::Error),
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// argon2 failed.
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// What one edit changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The text written (or printed, for `-c -`).
    pub text: String,
    /// Problems in other lines that the broker will refuse (the edit still happened; the broker
    /// keeps the previous file in force until they are fixed).
    pub warnings: Vec<String>,
}

/// Runs the subcommand with the real terminal/standard input and the production argon2
/// parameters; warnings go to standard error.
pub fn run(args: &PasswdArgs) -> Result<(), PasswdError> {
    let outcome = execute(args, &mut read_password, password::argon2_params()?)?;
    if is_stdout(args) {
        print!("{}", outcome.text);
    }
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

fn is_stdout(args: &PasswdArgs) -> bool {
    args.create && args.file.as_os_str() == "-"
}

/// The whole subcommand with the password source and the argon2 parameters injected (tests
/// use cheap parameters and canned passwords). Writes the file unless it is `-`.
pub fn execute(
    args: &PasswdArgs,
    ask_password: &mut dyn FnMut() -> Result<String, PasswdError>,
    params: argon2::Params,
) -> Result<Outcome, PasswdError> {
    check_options(args)?;
    password::check_username(&args.username)
        .map_err(|reason| PasswdError::BadUsername { username: args.username.clone(), reason })?;
    let path = args.file.as_path();
    let shown = path.display().to_string();
    let existing = if args.create {
        None
    } else {
        match fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PasswdError::MissingFile(shown));
            }
            Err(source) => return Err(PasswdError::Io { path: shown, source }),
        }
    };
    let edit = if args.delete {
        Edit::Delete { username: &args.username }
    } else {
        let password = match &args.password {
            Some(password) => password.clone(),
            None => ask_password()?,
        };
        check_password(&password)?;
        let hash = password::hash_password_with(password.as_bytes(), params)?;
        Edit::Set { username: args.username.clone(), hash }
    };
    let text = apply(existing.as_deref(), &edit).map_err(|e| match e {
        EditError::NoSuchUser => {
            PasswdError::NoSuchUser { username: args.username.clone(), path: shown.clone() }
        }
    })?;
    let warnings = match PasswordFile::parse(&text, &shown) {
        Ok(_) => Vec::new(),
        Err(err) => vec![format!("the broker will refuse this file until it is fixed: {err}")],
    };
    if !is_stdout(args) {
        write_atomically(path, &text).map_err(|source| PasswdError::Io { path: shown, source })?;
    }
    Ok(Outcome { text, warnings })
}

fn check_options(args: &PasswdArgs) -> Result<(), PasswdError> {
    if args.create && args.delete {
        return Err(PasswdError::Usage("-c and -D cannot be used together"));
    }
    if args.delete && (args.batch || args.password.is_some()) {
        return Err(PasswdError::Usage("-D takes no password"));
    }
    if args.password.is_some() && !args.batch {
        return Err(PasswdError::Usage("a password on the command line needs -b"));
    }
    if args.batch && args.password.is_none() {
        return Err(PasswdError::Usage("-b needs the password as the third argument"));
    }
    if args.file.as_os_str() == "-" && !args.create {
        return Err(PasswdError::Usage("FILE `-` (standard output) needs -c"));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), PasswdError> {
    // Mosquitto's passwd also refuses empty passwords when it reads them interactively; an
    // empty password is no credential.
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    if password.len() > usize::from(u16::MAX) {
        return Err(PasswdError::PasswordTooLong);
    }
    Ok(())
}

/// Asks twice on the terminal, or reads one line from a non-terminal standard input.
fn read_password() -> Result<String, PasswdError> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(PasswdError::ReadPassword)?;
        let second = rpassword::prompt_password("Reenter password: ").map_err(PasswdError::ReadPassword)?;
        if first != second {
            return Err(PasswdError::Mismatch);
        }
        Ok(first)
    } else {
        read_password_line(&mut std::io::stdin().lock())
    }
}

/// One line without its line ending.
fn read_password_line(input: &mut dyn std::io::BufRead) -> Result<String, PasswdError> {
    let mut line = String::new();
    input.read_line(&mut line).map_err(PasswdError::ReadPassword)?;
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// One change to a password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<'a> {
    /// Add the user or replace its hash.
    Set {
        /// The user.
        username: String,
        /// The hash to store.
        hash: String,
    },
    /// Remove the user.
    Delete {
        /// The user.
        username: &'a str,
    },
}

/// Why [`apply`] refused.
#[derive(Debug, PartialEq, Eq)]
pub enum EditError {
    /// `Delete` of a user that has no line.
    NoSuchUser,
}

/// Applies `edit` to the file text (`None`: a new file). Lines other than the user's, comments,
/// blank lines and line endings are kept byte for byte.
pub fn apply(existing: Option<&str>, edit: &Edit<'_>) -> Result<String, EditError> {
    let text = existing.unwrap_or_default();
    let username = match edit {
        Edit::Set { username, .. } => username.as_str(),
        Edit::Delete { username } => username,
    };
    let mut out = String::with_capacity(text.len() + 128);
    let mut found = false;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let is_user = !content.trim_start().starts_with('#')
            && content.split_once(':').map(|(u, _)| u) == Some(username);
        if !is_user {
            out.push_str(line);
            continue;
        }
        let first = !found;
        found = true;
        if let (Edit::Set { hash, .. }, true) = (edit, first) {
            out.push_str(username);
            out.push(':');
            out.push_str(hash);
            out.push_str(&line[content.len()..]);
        }
        // Delete, or a duplicate line of the user after the replaced one: dropped.
    }
    match edit {
        Edit::Delete { .. } if !found => Err(EditError::NoSuchUser),
        Edit::Set { hash, .. } if !found => {
            let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str(newline);
            }
            out.push_str(username);
            out.push(':');
            out.push_str(hash);
            out.push_str(newline);
            Ok(out)
        }
        _ => Ok(out),
    }
}

/// Writes `text` to `path` via a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let existing = fs::metadata(path).ok();
    // Follow a symlink so the link survives and its target is replaced.
    let target = match &existing {
        Some(_) => fs::canonicalize(path)?,
        None => path.to_path_buf(),
    };
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name =
        target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "passwords".into());
    let tmp = dir.join(format!(".{name}.fleetmq-passwd-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if let Some(meta) = &existing {
            fs::set_permissions(&tmp, meta.permissions())?;
            // Keep the owner when root edits someone else's file; an unprivileged user cannot
            // give files away, and then the file is theirs anyway.
            let _ = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()));
        }
        fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename durable; failing to sync the directory is not worth failing the edit.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn cheap() -> argon2::Params {
        argon2::Params::new(256, 1, 1, None).expect("valid params")
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("fleetmq-passwd-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn args(file: &Path, username: &str) -> PasswdArgs {
        PasswdArgs {
            create: false,
            batch: false,
            delete: false,
            file: file.to_path_buf(),
            username: username.into(),
            password: None,
        }
    }

    fn batch(file: &Path, username: &str, password: &str) -> PasswdArgs {
        PasswdArgs { batch: true, password: Some(password.into()), ..args(file, username) }
    }

    fn no_prompt() -> Result<String, PasswdError> {
        panic!("no password prompt expected")
    }

    #[test]
    fn apply_replaces_in_place_and_keeps_everything_else() {
        let text = "# team A\nalice:OLD\n\n# team B\r\nbob:B\ncarol:C";
        let set = |user: &str| Edit::Set { username: user.into(), hash: "NEW".into() };
        assert_eq!(
            apply(Some(text), &set("alice")),
            Ok("# team A\nalice:NEW\n\n# team B\r\nbob:B\ncarol:C".into())
        );
        assert_eq!(
            apply(Some(text), &set("carol")),
            Ok("# team A\nalice:OLD\n\n# team B\r\nbob:B\ncarol:NEW".into())
        );
        // Appended, with the missing final newline added first; CRLF files get CRLF.
        assert_eq!(apply(Some(text), &set("dave")), Ok(format!("{text}\r\ndave:NEW\r\n")));
        assert_eq!(apply(Some("a:1\n"), &set("dave")), Ok("a:1\ndave:NEW\n".into()));
        assert_eq!(apply(None, &set("dave")), Ok("dave:NEW\n".into()));
        // Delete keeps comments and other users.
        assert_eq!(
            apply(Some(text), &Edit::Delete { username: "bob" }),
            Ok("# team A\nalice:OLD\n\n# team B\r\ncarol:C".into())
        );
        assert_eq!(apply(Some(text), &Edit::Delete { username: "zed" }), Err(EditError::NoSuchUser));
        // Commented-out lines are not the user; prefixes are not the user.
        let tricky = "#alice:X\nalice2:Y\n";
        assert_eq!(apply(Some(tricky), &set("alice")), Ok("#alice:X\nalice2:Y\nalice:NEW\n".into()));
        assert_eq!(apply(Some(tricky), &Edit::Delete { username: "alice" }), Err(EditError::NoSuchUser));
        // Duplicates collapse into the first position.
        assert_eq!(apply(Some("u:1\nv:2\nu:3\n"), &set("u")), Ok("u:NEW\nv:2\n".into()));
        assert_eq!(apply(Some("u:1\nv:2\nu:3\n"), &Edit::Delete { username: "u" }), Ok("v:2\n".into()));
    }

    #[test]
    fn create_add_update_delete_round_trip() {
        let dir = TempDir::new("round-trip");
        let file = dir.0.join("passwords");
        let created =
            execute(&PasswdArgs { create: true, ..batch(&file, "alice", "one") }, &mut no_prompt, cheap())
                .expect("create");
        assert!(created.warnings.is_empty());
        let mode = fs::metadata(&file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "new files are private");
        // Add a comment by hand, then add bob and change alice's password.
        let with_comment = format!("# managed by hand\n{}", fs::read_to_string(&file).expect("read"));
        fs::write(&file, &with_comment).expect("write");
        execute(&batch(&file, "bob", "two"), &mut no_prompt, cheap()).expect("add bob");
        execute(&batch(&file, "alice", "three"), &mut no_prompt, cheap()).expect("update alice");
        let text = fs::read_to_string(&file).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# managed by hand");
        assert!(lines[1].starts_with("alice:$argon2id$v=19$m=256,t=1,p=1$"), "{text}");
        assert!(lines[2].starts_with("bob:$argon2id$"), "{text}");
        let parsed = PasswordFile::load(&file).expect("the broker accepts it");
        assert!(parsed.verify("alice", b"three"));
        assert!(!parsed.verify("alice", b"one"));
        assert!(parsed.verify("bob", b"two"));
        // Delete.
        execute(&PasswdArgs { delete: true, ..args(&file, "bob") }, &mut no_prompt, cheap()).expect("delete");
        let parsed = PasswordFile::load(&file).expect("load");
        assert_eq!(parsed.users().collect::<Vec<_>>(), ["alice"]);
        let err = execute(&PasswdArgs { delete: true, ..args(&file, "bob") }, &mut no_prompt, cheap())
            .expect_err("bob is gone");
        assert_eq!(err.to_string(), format!("user \"bob\" is not in {}", file.display()));
        // -c overwrites.
        execute(&PasswdArgs { create: true, ..batch(&file, "zed", "z") }, &mut no_prompt, cheap())
            .expect("overwrite");
        let parsed = PasswordFile::load(&file).expect("load");
        assert_eq!(parsed.users().collect::<Vec<_>>(), ["zed"]);
        // No temporary files left behind.
        let names: Vec<_> =
            fs::read_dir(&dir.0).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("passwords")]);
    }

    #[test]
    fn existing_mode_is_kept_and_symlinks_followed() {
        let dir = TempDir::new("mode");
        let real = dir.0.join("real");
        fs::write(&real, "a:$7$101$YWJjZGVmZ2hpamts$AAAA\n").expect("write");
        fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).expect("chmod");
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let outcome = execute(&batch(&link, "b", "pw"), &mut no_prompt, cheap()).expect("edit through link");
        assert!(fs::symlink_metadata(&link).expect("link").file_type().is_symlink(), "link kept");
        assert_eq!(fs::metadata(&real).expect("real").permissions().mode() & 0o777, 0o640);
        let text = fs::read_to_string(&real).expect("read");
        assert!(text.starts_with("a:$7$101$YWJjZGVmZ2hpamts$AAAA\nb:$argon2id$"), "{text}");
        // The untouched bad line is preserved but reported.
        assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
        assert!(outcome.warnings[0].contains(":1: user \"a\": malformed $7$"), "{:?}", outcome.warnings);
    }

    #[test]
    fn password_sources() {
        let dir = TempDir::new("sources");
        let file = dir.0.join("passwords");
        // Prompted (terminal or stdin line): the closure stands in for both.
        let mut asked = 0;
        let mut ask = || {
            asked += 1;
            Ok("from-prompt".to_string())
        };
        execute(&PasswdArgs { create: true, ..args(&file, "u") }, &mut ask, cheap()).expect("prompted");
        assert_eq!(asked, 1);
        assert!(PasswordFile::load(&file).expect("load").verify("u", b"from-prompt"));
        // Mismatch and empty passwords are refused and leave the file alone.
        let before = fs::read_to_string(&file).expect("read");
        let err =
            execute(&args(&file, "u"), &mut || Err(PasswdError::Mismatch), cheap()).expect_err("mismatch");
        assert_eq!(err.to_string(), "passwords do not match");
        let err = execute(&args(&file, "u"), &mut || Ok(String::new()), cheap()).expect_err("empty");
        assert_eq!(err.to_string(), "empty password");
        let err = execute(&batch(&file, "u", ""), &mut no_prompt, cheap()).expect_err("empty");
        assert!(matches!(err, PasswdError::EmptyPassword));
        let long = "x".repeat(65_536);
        let err = execute(&batch(&file, "u", &long), &mut no_prompt, cheap()).expect_err("too long");
        assert!(matches!(err, PasswdError::PasswordTooLong));
        assert_eq!(fs::read_to_string(&file).expect("read"), before);
    }

    #[test]
    fn stdin_line_reading() {
        let mut input = std::io::Cursor::new(b"s3cret pass\r\nsecond line\n".to_vec());
        assert_eq!(read_password_line(&mut input).expect("line"), "s3cret pass");
        let mut input = std::io::Cursor::new(b"no-newline".to_vec());
        assert_eq!(read_password_line(&mut input).expect("line"), "no-newline");
        let mut input = std::io::Cursor::new(Vec::new());
        assert_eq!(
            read_password_line(&mut input).expect("line"),
            "",
            "EOF is an empty password (then refused)"
        );
    }

    #[test]
    fn errors_for_bad_invocations() {
        let dir = TempDir::new("errors");
        let missing = dir.0.join("missing");
        let err = execute(&batch(&missing, "u", "p"), &mut no_prompt, cheap()).expect_err("missing file");
        assert_eq!(err.to_string(), format!("{}: no such file (use -c to create it)", missing.display()));
        assert!(!missing.exists());
        let file = dir.0.join("passwords");
        let cases: Vec<(PasswdArgs, &str)> = vec![
            (
                PasswdArgs { create: true, ..batch(&file, "a:b", "p") },
                "invalid username \"a:b\": username contains ':'",
            ),
            (
                PasswdArgs { create: true, ..batch(&file, "a\nb", "p") },
                "invalid username \"a\\nb\": username contains a control character",
            ),
            (PasswdArgs { create: true, ..batch(&file, "", "p") }, "invalid username \"\": empty username"),
            (
                PasswdArgs { create: true, delete: true, ..args(&file, "u") },
                "-c and -D cannot be used together",
            ),
            (PasswdArgs { delete: true, ..batch(&file, "u", "p") }, "-D takes no password"),
            (
                PasswdArgs { password: Some("p".into()), ..args(&file, "u") },
                "a password on the command line needs -b",
            ),
            (PasswdArgs { batch: true, ..args(&file, "u") }, "-b needs the password as the third argument"),
            (batch(Path::new("-"), "u", "p"), "FILE `-` (standard output) needs -c"),
        ];
        for (a, expected) in cases {
            let err = execute(&a, &mut no_prompt, cheap()).expect_err(expected);
            assert_eq!(err.to_string(), expected);
            assert!(!err.to_string().contains("p\""), "no password echoed");
        }
        assert!(!file.exists(), "nothing written on errors");
    }

    #[test]
    fn create_to_stdout_writes_no_file() {
        let outcome = execute(
            &PasswdArgs { create: true, ..batch(Path::new("-"), "u", "pw") },
            &mut no_prompt,
            cheap(),
        )
        .expect("stdout");
        assert!(outcome.text.starts_with("u:$argon2id$"), "{}", outcome.text);
        assert!(!Path::new("-").exists());
        assert!(PasswordFile::parse(&outcome.text, "-").expect("parse").verify("u", b"pw"));
    }
}
