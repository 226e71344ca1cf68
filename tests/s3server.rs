//! A real S3 server for the sync tests: s3s-fs in-process (signatures
//! checked with `SimpleAuth`), or an external server (Garage, `MinIO`, AWS)
//! named by `KACHE_TEST_S3_ENDPOINT`, `_BUCKET`, `_ACCESS_KEY`,
//! `_SECRET_KEY`, `_REGION`. Plus a fault-injecting HTTP proxy to put
//! between kache and the server.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A bucket to test against. Each value has its own prefix, so tests
/// sharing an external bucket never see each other's objects.
pub(crate) struct S3 {
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    pub(crate) access_key: String,
    pub(crate) secret_key: String,
    pub(crate) region: String,
    pub(crate) prefix: String,
    /// The bucket's directory (s3s-fs only): objects are files under it.
    pub(crate) bucket_dir: Option<PathBuf>,
    _server: Option<Server>,
}

struct Server {
    _root: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // Short: s3s-fs keeps per-object metadata in a file named after the
    // base64 of the object name, which must fit in 255 bytes.
    format!(
        "{tag}-{:x}-{:x}-{}",
        std::process::id(),
        t % 0x1000_0000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// True when the tests run against an external server.
pub(crate) fn external() -> bool {
    std::env::var("KACHE_TEST_S3_ENDPOINT").is_ok_and(|v| !v.is_empty())
}

impl S3 {
    /// An external server if configured, else a fresh s3s-fs.
    pub(crate) fn start() -> S3 {
        if external() {
            let var = |n: &str| {
                std::env::var(format!("KACHE_TEST_S3_{n}"))
                    .unwrap_or_else(|_| panic!("KACHE_TEST_S3_{n} must be set too"))
            };
            return S3 {
                endpoint: var("ENDPOINT"),
                bucket: var("BUCKET"),
                access_key: var("ACCESS_KEY"),
                secret_key: var("SECRET_KEY"),
                region: std::env::var("KACHE_TEST_S3_REGION")
                    .unwrap_or_else(|_| "us-east-1".into()),
                prefix: unique("t"),
                bucket_dir: None,
                _server: None,
            };
        }
        start_s3s_fs()
    }

    /// Always a fresh in-process s3s-fs, whose bucket files a test can
    /// read and damage.
    pub(crate) fn start_local() -> S3 {
        start_s3s_fs()
    }

    /// Sets the remote settings on a kache command.
    pub(crate) fn configure(&self, c: &mut Command) {
        self.configure_at(c, &self.endpoint);
    }

    /// Same, but through another endpoint (a proxy).
    pub(crate) fn configure_at(&self, c: &mut Command, endpoint: &str) {
        c.env("KACHE_S3_ENDPOINT", endpoint)
            .env("KACHE_S3_BUCKET", &self.bucket)
            .env("KACHE_S3_REGION", &self.region)
            .env("KACHE_S3_PREFIX", &self.prefix)
            .env("KACHE_S3_ACCESS_KEY", &self.access_key)
            .env("KACHE_S3_SECRET_KEY", &self.secret_key);
    }

    /// The file holding object `name` (s3s-fs only).
    pub(crate) fn object_file(&self, name: &str) -> Option<PathBuf> {
        self.bucket_dir.as_ref().map(|d| d.join(name))
    }

    /// Every object file under this test's prefix (s3s-fs only), as
    /// names relative to the bucket, sorted.
    pub(crate) fn objects(&self) -> Option<Vec<String>> {
        let dir = self.bucket_dir.as_ref()?;
        let mut out = Vec::new();
        walk(&dir.join(&self.prefix), dir, &mut out);
        out.sort();
        Some(out)
    }
}

impl S3 {
    /// Every object name under this test's prefix, sorted: the files of
    /// s3s-fs, or a `ListObjectsV2` of an external server.
    pub(crate) fn names(&self) -> Vec<String> {
        if let Some(o) = self.objects() {
            return o;
        }
        let bucket = rusty_s3::Bucket::new(
            self.endpoint.parse().expect("endpoint is a URL"),
            rusty_s3::UrlStyle::Path,
            self.bucket.clone(),
            self.region.clone(),
        )
        .expect("bucket");
        let creds = rusty_s3::Credentials::new(self.access_key.clone(), self.secret_key.clone());
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut a = bucket.list_objects_v2(Some(&creds));
            a.with_prefix(format!("{}/", self.prefix));
            if let Some(t) = &token {
                a.with_continuation_token(t.clone());
            }
            let url = rusty_s3::S3Action::sign(&a, std::time::Duration::from_mins(10));
            let text = ureq::get(url.as_str())
                .call()
                .expect("listing")
                .body_mut()
                .read_to_string()
                .expect("listing body");
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text).expect("listing");
            out.extend(page.contents.into_iter().map(|o| o.key));
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        out.sort();
        out
    }
}

fn walk(d: &Path, base: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(d) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, base, out);
        } else {
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().to_string();
            let file = p.file_name().unwrap().to_string_lossy().to_string();
            if !file.starts_with('.') {
                out.push(rel);
            }
        }
    }
}

fn start_s3s_fs() -> S3 {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    use s3s::auth::SimpleAuth;
    use s3s::service::S3ServiceBuilder;

    let root = tempfile::tempdir().unwrap();
    let bucket = "kache-test".to_string();
    let bucket_dir = root.path().join(&bucket);
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let (access_key, secret_key) = (
        "AKTESTKACHE".to_string(),
        "sEcReT-kache-test-123".to_string(),
    );
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let fs_root = root.path().to_path_buf();
    let (ak, sk) = (access_key.clone(), secret_key.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let fs = s3s_fs::FileSystem::new(&fs_root).unwrap();
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SimpleAuth::from_single(ak, sk));
            let service = b.build();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let socket = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                    _ = &mut stop_rx => break,
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    S3 {
        endpoint: format!("http://{addr}"),
        bucket,
        access_key,
        secret_key,
        region: "us-east-1".into(),
        prefix: unique("t"),
        bucket_dir: Some(bucket_dir),
        _server: Some(Server {
            _root: root,
            shutdown: Some(stop_tx),
        }),
    }
}

/// What the proxy does to a request instead of forwarding it.
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    /// Answer with this status and S3 error code (and `Retry-After: 1`
    /// for 429 and 503).
    Status(u16, &'static str),
    /// Answer with this status and S3 error code, and `Retry-After` of
    /// this many seconds.
    RetryAfter(u16, &'static str, u64),
    /// Close the connection without answering.
    Cut,
    /// Forward, but send only half the response body, then close.
    Truncate,
    /// Read half the request body, then close (an upload cut mid-body).
    CutUpload,
    /// Forward, send half the response body, then go silent without
    /// closing (a server that stalls mid-body).
    Stall,
    /// Read the request, then never answer (until the proxy stops or a
    /// minute passes): a server that stopped responding.
    Hang,
}

/// One request seen by the proxy.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    /// The `prefix` query parameter of a listing, decoded.
    pub(crate) list_prefix: Option<String>,
    /// The request's Content-Length header.
    pub(crate) content_length: Option<u64>,
    /// The request's Range header (a ranged GET).
    pub(crate) range: Option<String>,
    /// The names of the query parameters (not their values).
    pub(crate) query_names: Vec<String>,
    /// When the request head arrived.
    pub(crate) at: Instant,
    /// The fault injected into it, if any.
    pub(crate) fault: Option<Fault>,
}

/// Faults are chosen by a needle found in the request's decoded path,
/// followed, for a listing, by ` list:` and its decoded `prefix`
/// parameter: `list:{prefix}/foo/` picks the listings of crate `foo`.
#[derive(Default)]
struct Faults {
    /// (only for paths containing this, fault)
    next: VecDeque<(String, Fault)>,
    matching: Vec<(String, Fault)>,
}

struct ProxyState {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    delay: Mutex<Duration>,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    /// Random faults: (probability in [0, 1], xorshift state).
    random: Mutex<(f64, u64)>,
    injected: AtomicUsize,
    /// Send response bodies this many bytes at a time, pausing between.
    trickle: Mutex<Option<(usize, Duration)>>,
    /// A `Date` header to answer with instead of the server's (a server
    /// whose clock is off).
    date: Mutex<Option<String>>,
}

/// A fault-injecting HTTP/1.1 proxy in front of a server.
pub(crate) struct Proxy {
    pub(crate) endpoint: String,
    state: Arc<ProxyState>,
    addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`).
    pub(crate) fn start(upstream: &str) -> Proxy {
        let hostport = upstream
            .strip_prefix("http://")
            .expect("the proxy speaks plain HTTP")
            .trim_end_matches('/');
        let upstream: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            faults: Mutex::default(),
            delay: Mutex::new(Duration::ZERO),
            inflight: AtomicUsize::new(0),
            max_inflight: AtomicUsize::new(0),
            seen: Mutex::default(),
            stop: AtomicBool::new(false),
            random: Mutex::new((0.0, 0x9e37_79b9_7f4a_7c15)),
            injected: AtomicUsize::new(0),
            trickle: Mutex::new(None),
            date: Mutex::new(None),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(&st, conn);
                });
            }
        });
        Proxy {
            endpoint: format!("http://{addr}"),
            state,
            addr,
        }
    }

    /// Answers with this `Date` header instead of the server's.
    pub(crate) fn set_date(&self, date: &str) {
        *self.state.date.lock().unwrap() = Some(date.to_string());
    }

    /// The next requests get these faults, in order.
    pub(crate) fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.fail_next_where("", faults);
    }

    /// The next requests whose path contains `needle` get these faults.
    pub(crate) fn fail_next_where(&self, needle: &str, faults: impl IntoIterator<Item = Fault>) {
        let mut f = self.state.faults.lock().unwrap();
        f.next
            .extend(faults.into_iter().map(|x| (needle.to_string(), x)));
    }

    /// Every request whose path contains `needle` gets `fault`.
    pub(crate) fn fail_matching(&self, needle: &str, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .matching
            .push((needle.to_string(), fault));
    }

    /// Drops every queued and standing fault.
    pub(crate) fn clear_faults(&self) {
        *self.state.faults.lock().unwrap() = Faults::default();
    }

    /// Holds every request this long before answering.
    pub(crate) fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// The most requests that were in flight at once.
    pub(crate) fn max_inflight(&self) -> usize {
        self.state.max_inflight.load(Ordering::SeqCst)
    }

    pub(crate) fn reset_stats(&self) {
        self.state.max_inflight.store(0, Ordering::SeqCst);
        self.state.seen.lock().unwrap().clear();
    }

    /// Every request seen so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// From now on each request gets a random fault (503, 500, 429, a
    /// cut connection either way, a truncated body) with probability
    /// `rate`; the sequence is fixed by `seed`.
    pub(crate) fn set_fault_rate(&self, rate: f64, seed: u64) {
        *self.state.random.lock().unwrap() = (rate, seed | 1);
    }

    /// Sends response bodies `chunk` bytes at a time with `pause` between
    /// chunks (a slow link), or at full speed with `None`.
    pub(crate) fn set_trickle(&self, t: Option<(usize, Duration)>) {
        *self.state.trickle.lock().unwrap() = t;
    }

    /// How many faults were injected so far.
    pub(crate) fn faults_injected(&self) -> usize {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Faults not yet used.
    pub(crate) fn pending_faults(&self) -> usize {
        self.state.faults.lock().unwrap().next.len()
    }
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end_matches(['\r', '\n']).to_string();
        if l.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return Ok(Some(lines));
        }
        lines.push(l);
    }
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(st: &ProxyState, client: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut parts = head[0].split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let list_prefix = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("prefix="))
            .map(decode);
        let subject = match &list_prefix {
            Some(p) => format!("{} list:{p}", decode(path)),
            None => decode(path),
        };
        let fault = pick_fault(st, &method, &subject);
        if fault.is_some() {
            st.injected.fetch_add(1, Ordering::SeqCst);
        }
        st.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: decode(path),
            list_prefix,
            content_length: header(&head, "content-length").and_then(|v| v.parse().ok()),
            range: header(&head, "range").map(str::to_string),
            query_names: query
                .split('&')
                .filter_map(|kv| kv.split('=').next())
                .filter(|k| !k.is_empty())
                .map(ToString::to_string)
                .collect(),
            at: Instant::now(),
            fault: fault.clone(),
        });
        if matches!(fault, Some(Fault::CutUpload)) {
            let mut half = vec![0u8; len / 2];
            let _ = reader.read_exact(&mut half);
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        if matches!(fault, Some(Fault::Hang)) {
            let until = Instant::now() + Duration::from_mins(1);
            while Instant::now() < until && !st.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }

        let now = st.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_inflight.fetch_max(now, Ordering::SeqCst);
        let delay = *st.delay.lock().unwrap();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let response = match &fault {
            None | Some(Fault::Truncate | Fault::Stall) => Some(forward(st.upstream, &head, &body)),
            _ => None,
        };
        st.inflight.fetch_sub(1, Ordering::SeqCst);
        match (fault, response) {
            (Some(Fault::Cut), _) => {
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            (Some(f @ (Fault::Status(..) | Fault::RetryAfter(..))), _) => {
                let (Fault::Status(code, s3code) | Fault::RetryAfter(code, s3code, _)) = f else {
                    unreachable!()
                };
                let xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3code}</Code><Message>injected fault</Message><Resource>{target}</Resource></Error>"
                );
                let extra = match f {
                    Fault::RetryAfter(_, _, secs) => format!("Retry-After: {secs}\r\n"),
                    _ if code == 429 || code == 503 => "Retry-After: 1\r\n".to_string(),
                    _ => String::new(),
                };
                write!(
                    client,
                    "HTTP/1.1 {code} Fault\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n{extra}\r\n{xml}",
                    xml.len()
                )?;
                client.flush()?;
            }
            (Some(Fault::Truncate), Some(resp)) => {
                let resp = resp?;
                let (h, b) = resp;
                client.write_all(&h)?;
                client.write_all(&b[..b.len() / 2])?;
                client.flush()?;
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            (Some(Fault::Stall), Some(resp)) => {
                let (h, b) = resp?;
                client.write_all(&h)?;
                client.write_all(&b[..b.len() / 2])?;
                client.flush()?;
                let until = Instant::now() + Duration::from_mins(1);
                while Instant::now() < until && !st.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            (None, Some(resp)) => {
                let (h, b) = resp?;
                let h = match &*st.date.lock().unwrap() {
                    Some(d) => String::from_utf8_lossy(&h)
                        .split("\r\n")
                        .map(|l| {
                            if l.to_ascii_lowercase().starts_with("date:") {
                                format!("Date: {d}")
                            } else {
                                l.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\r\n")
                        .into_bytes(),
                    None => h,
                };
                client.write_all(&h)?;
                let trickle = *st.trickle.lock().unwrap();
                match trickle {
                    Some((chunk, pause)) => {
                        for c in b.chunks(chunk.max(1)) {
                            client.write_all(c)?;
                            client.flush()?;
                            std::thread::sleep(pause);
                        }
                    }
                    None => client.write_all(&b)?,
                }
                client.flush()?;
            }
            _ => unreachable!(),
        }
    }
}

/// The fault for one request: a standing one for its path, else the
/// next queued one if it matches, else a random one at the set rate.
fn pick_fault(st: &ProxyState, method: &str, p: &str) -> Option<Fault> {
    let mut f = st.faults.lock().unwrap();
    if let Some((_, x)) = f.matching.iter().find(|(n, _)| p.contains(n.as_str())) {
        return Some(x.clone());
    }
    if f.next.front().is_some_and(|(n, _)| p.contains(n.as_str())) {
        return f.next.pop_front().map(|(_, x)| x);
    }
    drop(f);
    let mut r = st.random.lock().unwrap();
    let rate = r.0;
    if rate <= 0.0 {
        return None;
    }
    let mut next = || {
        r.1 ^= r.1 << 13;
        r.1 ^= r.1 >> 7;
        r.1 ^= r.1 << 17;
        r.1
    };
    #[allow(clippy::cast_precision_loss)]
    let roll = (next() % 1_000_000) as f64 / 1_000_000.0;
    if roll >= rate {
        return None;
    }
    let choices: &[Fault] = if method == "PUT" {
        &[
            Fault::Status(503, "SlowDown"),
            Fault::Status(500, "InternalError"),
            Fault::Status(429, "TooManyRequests"),
            Fault::Cut,
            Fault::CutUpload,
        ]
    } else {
        &[
            Fault::Status(503, "SlowDown"),
            Fault::Status(500, "InternalError"),
            Fault::Status(429, "TooManyRequests"),
            Fault::Cut,
            Fault::Truncate,
        ]
    };
    let i = usize::try_from(next() % choices.len() as u64).unwrap();
    Some(choices[i].clone())
}

/// Sends one request upstream on a fresh connection; returns the
/// response head (without `Connection` headers) and body bytes.
fn forward(
    upstream: SocketAddr,
    head: &[String],
    body: &[u8],
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut up = TcpStream::connect(upstream)?;
    let mut req = String::new();
    req.push_str(&head[0]);
    req.push_str("\r\n");
    for l in &head[1..] {
        if l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes())?;
    up.write_all(body)?;
    up.flush()?;
    let mut r = BufReader::new(up);
    let rhead = read_head(&mut r)?.ok_or_else(|| std::io::Error::other("no response"))?;
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)?;
    // Re-frame with a Content-Length so the client may keep the
    // connection (the upstream may have used chunked encoding).
    let chunked = header(&rhead, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let body = if chunked { dechunk(&rest) } else { rest };
    let mut h = String::new();
    h.push_str(&rhead[0]);
    h.push_str("\r\n");
    for l in &rhead[1..] {
        let ll = l.to_ascii_lowercase();
        if ll.starts_with("connection:")
            || ll.starts_with("transfer-encoding:")
            || ll.starts_with("content-length:")
        {
            continue;
        }
        h.push_str(l);
        h.push_str("\r\n");
    }
    let status_no_body = rhead[0].contains(" 204 ") || rhead[0].contains(" 304 ");
    if !status_no_body {
        h.push_str("Content-Length: ");
        h.push_str(&body.len().to_string());
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    Ok((h.into_bytes(), body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(pos) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_line = std::str::from_utf8(&b[..pos]).unwrap_or("0");
        let size =
            usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        b = &b[pos + 2..];
        if size == 0 || b.len() < size {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
}
