//! The control socket of slr's daemons (`slr router`, `slr host`) and its clients (`slr ctl`,
//! the lab).
//!
//! A Unix stream socket; one JSON request per line (`{"cmd":"flows"}`), one JSON answer per
//! line. Answers carry `"ok": true` or `"ok": false, "error": "..."`. A long answer may come in
//! parts: every part but the last carries `"more": true` (`slr ctl R flows --all` streams a
//! million flows this way, page by page, without building them all in memory). The daemon
//! decides what each command means ([`serve`] takes the handler); this crate owns the
//! transport: where the socket lives ([`resolve_socket`]), a stale socket left by a crashed
//! daemon, one thread per connection, and the client side ([`request`], [`request_stream`]).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What can go wrong on the control socket.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket's directory could not be made, or the socket bound.
    #[error("control socket {}: {source}", path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another daemon answers on the socket already.
    #[error("control socket {} is in use by a running daemon", path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// No daemon answers there.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("{}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The answer was not JSON.
    #[error("bad answer from {}: {message}", path.display())]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// The JSON reader's message.
        message: String,
    },
    /// The daemon refused the request (`"ok": false`).
    #[error("{}: {message}", path.display())]
    Refused {
        /// The socket.
        path: PathBuf,
        /// The daemon's error.
        message: String,
    },
    /// A daemon name that names no socket, or several.
    #[error("{0}")]
    NotFound(String),
    /// The serving thread could not start.
    #[error("cannot start the control socket thread: {0}")]
    Thread(std::io::Error),
}

/// How long a request or answer may take on the wire.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where a handler sends the parts of a streamed answer.
pub struct Parts<'a> {
    w: &'a mut UnixStream,
    broken: bool,
}

impl Parts<'_> {
    /// Sends one part (`"more": true` is added); false once the client is gone, so that the
    /// handler stops producing.
    pub fn send(&mut self, mut part: Value) -> bool {
        if self.broken {
            return false;
        }
        if let Some(o) = part.as_object_mut() {
            o.insert("more".into(), Value::Bool(true));
        }
        self.broken = writeln!(self.w, "{part}").is_err();
        !self.broken
    }
}

/// Serves requests on `path` from a thread; `handler` answers each request: its return value
/// is the answer (the last part of a streamed one, sent after the parts it gave [`Parts`]).
///
/// A socket file left by a crashed daemon is replaced; one a live daemon answers on is not.
pub fn serve(
    path: &Path,
    handler: impl Fn(&Value, &mut Parts) -> Value + Send + Sync + 'static,
) -> Result<(), CtlError> {
    let bind_err = |source| CtlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    // A socket file left by a crashed daemon would make bind fail; a live daemon would answer.
    if UnixStream::connect(path).is_ok() {
        return Err(CtlError::InUse {
            path: path.to_path_buf(),
        });
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let handler = std::sync::Arc::new(handler);
    std::thread::Builder::new()
        .name("ctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("ctl-conn".into())
                    .spawn(move || serve_connection(conn, &*handler));
            }
        })
        .map_err(CtlError::Thread)?;
    Ok(())
}

fn serve_connection(conn: UnixStream, handler: &(impl Fn(&Value, &mut Parts) -> Value + ?Sized)) {
    let _ = conn.set_read_timeout(Some(TIMEOUT));
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { break };
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(req) => {
                let mut parts = Parts {
                    w: &mut w,
                    broken: false,
                };
                let last = handler(&req, &mut parts);
                if parts.broken {
                    break;
                }
                last
            }
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        if writeln!(w, "{answer}").is_err() {
            break;
        }
    }
}

/// Sends one request and returns the answer; an `"ok": false` answer is [`CtlError::Refused`].
/// A streamed answer's parts are passed over: use [`request_stream`] for them.
pub fn request(path: &Path, req: &Value) -> Result<Value, CtlError> {
    request_stream(path, req, |_| Ok(()))
}

/// Sends one request; `part` sees every part of the answer as it arrives (the last one
/// included), which is also returned. An `"ok": false` part is [`CtlError::Refused`].
pub fn request_stream(
    path: &Path,
    req: &Value,
    mut part: impl FnMut(&Value) -> Result<(), CtlError>,
) -> Result<Value, CtlError> {
    let io = |source| CtlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| CtlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    writeln!(s, "{req}").map_err(io)?;
    let mut reader = BufReader::new(s);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            return Err(CtlError::BadAnswer {
                path: path.to_path_buf(),
                message: "the daemon closed the connection before the answer ended".into(),
            });
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| CtlError::BadAnswer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if v["ok"] == json!(false) {
            return Err(CtlError::Refused {
                path: path.to_path_buf(),
                message: v["error"].as_str().unwrap_or("error").to_owned(),
            });
        }
        part(&v)?;
        if v["more"] != json!(true) {
            return Ok(v);
        }
    }
}

/// Finds the control socket of `target`: a path, or a daemon name in a running lab
/// (`/run/slr-lab/*/NAME.sock`) or in `/run/slr/NAME.sock`.
pub fn resolve_socket(target: &str) -> Result<PathBuf, CtlError> {
    let p = PathBuf::from(target);
    if target.contains('/') || p.extension().is_some_and(|e| e == "sock") {
        return Ok(p);
    }
    let mut found = Vec::new();
    if let Ok(labs) = std::fs::read_dir("/run/slr-lab") {
        for lab in labs.flatten() {
            let s = lab.path().join(format!("{target}.sock"));
            if s.exists() {
                found.push(s);
            }
        }
    }
    let s = PathBuf::from(format!("/run/slr/{target}.sock"));
    if s.exists() {
        found.push(s);
    }
    match found.len() {
        0 => Err(CtlError::NotFound(format!(
            "no control socket for {target:?} (looked in /run/slr-lab/*/ and /run/slr/); pass a path"
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(CtlError::NotFound(format!(
            "{target:?} names several daemons: {found:?}; pass a path"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_answer_over_a_socket() {
        let dir = std::env::temp_dir().join(format!("slr-ctl-test-{}", std::process::id()));
        let path = dir.join("d.sock");
        serve(&path, |req, parts| match req["cmd"].as_str() {
            Some("echo") => json!({"ok": true, "echo": req["arg"]}),
            Some("count") => {
                for i in 0..3 {
                    if !parts.send(json!({"ok": true, "n": i})) {
                        break;
                    }
                }
                json!({"ok": true, "n": 3})
            }
            _ => json!({"ok": false, "error": "unknown command"}),
        })
        .unwrap();
        let a = request(&path, &json!({"cmd": "echo", "arg": 7})).unwrap();
        assert_eq!(a["echo"], 7);
        // A streamed answer: every part in order, the last without "more".
        let mut seen = Vec::new();
        let last = request_stream(&path, &json!({"cmd": "count"}), |p| {
            seen.push(p["n"].as_u64().unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [0, 1, 2, 3]);
        assert_eq!(last["more"], Value::Null);
        assert_eq!(request(&path, &json!({"cmd": "count"})).unwrap()["n"], 3);
        let e = request(&path, &json!({"cmd": "nope"})).unwrap_err();
        assert!(matches!(e, CtlError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("unknown command"), "{e}");
        // A second daemon on the same socket is refused while the first answers.
        assert!(matches!(
            serve(&path, |_, _| json!({})),
            Err(CtlError::InUse { .. })
        ));
        assert_eq!(resolve_socket(path.to_str().unwrap()).unwrap(), path);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
