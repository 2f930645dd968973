//! `mqedge passwd -f FILE USER`: reads the new password and hands it to
//! [`mqedge_broker::auth::set_user`]. On a terminal it asks twice with echo off and compares;
//! from a pipe it reads one line, so scripts can set passwords.
//!
//! The terminal is put in non-canonical mode without echo or signals for the two reads, so that
//! Ctrl-C is seen here as a byte and the terminal's settings are put back before exiting (a
//! SIGINT in the middle would leave the user's shell without echo). Backspace and Ctrl-U edit
//! the line as they would in canonical mode.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::ExitCode;

use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

/// Runs the subcommand: 0 when the file was written, 1 (nothing written) otherwise.
pub fn run(file: &Path, user: &str) -> ExitCode {
    let password = match read_password() {
        Ok(p) => p,
        Err(why) => return fail(&why),
    };
    if password.is_empty() {
        return fail("empty password refused; nothing written");
    }
    match mqedge_broker::auth::set_user(file, user, &password) {
        Ok(()) => {
            println!("{}: set password of {user}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(why: &str) -> ExitCode {
    eprintln!("mqedge passwd: {why}");
    ExitCode::from(1)
}

/// The password: twice without echo from a terminal on stdin, else the first line of stdin.
fn read_password() -> Result<Vec<u8>, String> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return read_first_line(&mut stdin.lock());
    }
    // Quiet before the first prompt shows (so nothing typed after it is flushed or echoed),
    // and for both reads (so nothing typed between them is echoed).
    let _quiet = QuietTerminal::new(stdin.as_fd())
        .map_err(|e| format!("cannot turn off echo on the terminal: {e}"))?;
    let mut input = stdin.lock();
    let first = prompt_secret(&mut input, "Password: ")?;
    let second = prompt_secret(&mut input, "Repeat password: ")?;
    if first != second {
        return Err("the two passwords differ; nothing written".into());
    }
    Ok(first)
}

/// One line from a pipe or file, without its line ending. Nothing at all is an error (a script
/// that forgot to pipe a password), an empty line is refused by the caller.
fn read_first_line(input: &mut impl BufRead) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    match input.read_until(b'\n', &mut line) {
        Ok(0) => Err("no password on stdin; nothing written".into()),
        Ok(_) => {
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            Ok(line)
        }
        Err(e) => Err(format!("cannot read the password from stdin: {e}")),
    }
}

/// Prints `prompt` on stderr and reads one line from the (quiet) terminal.
fn prompt_secret(input: &mut impl Read, prompt: &str) -> Result<Vec<u8>, String> {
    eprint!("{prompt}");
    let _ = io::stderr().flush();
    let line = read_secret_line(input);
    // The Enter key was not echoed either.
    eprintln!();
    match line {
        Ok(Line::Done(p)) => Ok(p),
        Ok(Line::Interrupted) => Err("interrupted; nothing written".into()),
        Ok(Line::Eof) => Err("no password entered; nothing written".into()),
        Err(e) => Err(format!("cannot read the password from the terminal: {e}")),
    }
}

/// The terminal in non-canonical mode without echo and without signal keys for as long as this
/// lives; the saved settings are restored on drop (also on an early return or a panic).
struct QuietTerminal<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> QuietTerminal<'a> {
    fn new(fd: BorrowedFd<'a>) -> nix::Result<Self> {
        let saved = termios::tcgetattr(fd)?;
        let mut quiet = saved.clone();
        quiet
            .local_flags
            .remove(LocalFlags::ECHO | LocalFlags::ICANON | LocalFlags::ISIG | LocalFlags::IEXTEN);
        quiet.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        quiet.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        // FLUSH drops anything typed before the prompt appeared, as getpass(3) does.
        termios::tcsetattr(fd, SetArg::TCSAFLUSH, &quiet)?;
        Ok(QuietTerminal { fd, saved })
    }
}

impl Drop for QuietTerminal<'_> {
    fn drop(&mut self) {
        if let Err(e) = termios::tcsetattr(self.fd, SetArg::TCSANOW, &self.saved) {
            eprintln!(
                "mqedge passwd: could not restore the terminal settings ({e}); run `stty sane`"
            );
        }
    }
}

/// How reading one secret line ended.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Enter was pressed; the bytes typed, edits applied.
    Done(Vec<u8>),
    /// Ctrl-C.
    Interrupted,
    /// Ctrl-D on an empty line, or the terminal closed before anything was typed.
    Eof,
}

const CTRL_C: u8 = 0x03;
const CTRL_D: u8 = 0x04;
const BACKSPACE: u8 = 0x08;
const CTRL_U: u8 = 0x15;
const DELETE: u8 = 0x7f;

/// Reads bytes up to Enter from a terminal in non-canonical mode, doing the line editing the
/// terminal would: Backspace/Delete remove the last character (a whole UTF-8 sequence), Ctrl-U
/// clears the line, Ctrl-C aborts, Ctrl-D on an empty line is end of input.
fn read_secret_line(input: &mut impl Read) -> io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8];
        if input.read(&mut byte)? == 0 {
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::Done(line)
            });
        }
        match byte[0] {
            b'\r' | b'\n' => return Ok(Line::Done(line)),
            CTRL_C => return Ok(Line::Interrupted),
            CTRL_D if line.is_empty() => return Ok(Line::Eof),
            CTRL_D => {}
            BACKSPACE | DELETE => {
                // Drop continuation bytes (10xxxxxx) up to and including the lead byte.
                while let Some(b) = line.pop() {
                    if b & 0xC0 != 0x80 {
                        break;
                    }
                }
            }
            CTRL_U => line.clear(),
            b => line.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(bytes: &[u8]) -> Line {
        read_secret_line(&mut &bytes[..]).unwrap()
    }

    #[test]
    fn secret_line_editing() {
        assert_eq!(line(b"s3cret\r"), Line::Done(b"s3cret".to_vec()));
        assert_eq!(line(b"s3cret\nrest"), Line::Done(b"s3cret".to_vec()));
        assert_eq!(line(b"abx\x7fc\r"), Line::Done(b"abc".to_vec()));
        assert_eq!(line(b"ab\x08\x08\x08c\r"), Line::Done(b"c".to_vec()));
        assert_eq!(line("pä\x7fa\r".as_bytes()), Line::Done(b"pa".to_vec()));
        assert_eq!(line(b"wrong\x15right\r"), Line::Done(b"right".to_vec()));
        assert_eq!(line(b"ab\x04c\r"), Line::Done(b"abc".to_vec()));
        assert_eq!(line(b"\r"), Line::Done(Vec::new()));
        assert_eq!(line(b"sec\x03ret\r"), Line::Interrupted);
        assert_eq!(line(b"\x04"), Line::Eof);
        assert_eq!(line(b""), Line::Eof);
        assert_eq!(line(b"partial"), Line::Done(b"partial".to_vec()));
    }

    #[test]
    fn first_line_from_a_pipe() {
        let read = |b: &[u8]| read_first_line(&mut &b[..]);
        assert_eq!(read(b"s3cret\n").unwrap(), b"s3cret");
        assert_eq!(read(b"s3cret\r\nsecond\n").unwrap(), b"s3cret");
        assert_eq!(read(b"no newline").unwrap(), b"no newline");
        assert_eq!(read(b" spaced \n").unwrap(), b" spaced ");
        assert_eq!(read(b"\n").unwrap(), b"");
        assert!(read(b"").unwrap_err().contains("no password on stdin"));
    }
}
