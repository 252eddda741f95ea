//! A fault-injecting HTTP/1.1 proxy for moto, on 127.0.0.1: it reads each request on a kept-alive client
//! connection, finds its action (`Action=` in the form body: EC2 and STS speak the query protocol; or the
//! `X-Amz-Target` header: SSM speaks JSON), and by the first rule that fires answers it with the service's error
//! (EC2's XML, or JSON for a JSON request), delays it (or its answer), resets the connection (before or after moto
//! has acted on it), rewrites moto's answer where moto models something differently from EC2 (a copy's volume id,
//! a snapshot's state), or forwards it to moto. Rules fire at a rate (one seeded RNG for the whole proxy, so a failing run can be replayed) or on chosen calls of the
//! matching actions, optionally only for requests signed for one region (the SigV4 credential scope: moto serves
//! every region on one endpoint, and the signing region is where AWS would have sent the call) or carrying one
//! parameter value (an AssumeRole of one role). Every request is
//! logged with its arrival time, signing region, action and outcome, so a test can count injected faults and
//! measure requests per second as AWS would see them, region by region.
//!
//! Forwarding opens one moto connection per request with `Connection: close` and re-frames the answer with a
//! `Content-Length`, so the client side keeps alive whatever moto does.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the proxy does to a request a rule fires on.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with EC2's error XML for `code` (the HTTP status follows the code, as EC2's does).
    Error(&'static str),
    /// Hold the request this long, then forward it.
    Delay(Duration),
    /// Close the connection without answering.
    Reset,
    /// Forward, then replace each `(from, to)` in moto's answer: what EC2 says where moto says otherwise.
    Rewrite(Vec<(String, String)>),
    /// Forward at once, then hold moto's answer this long: the call has taken effect (a snapshot or copy exists)
    /// while the client still waits, as when EC2's answer is slow or lost with the caller.
    Late(Duration),
    /// Forward, then close the connection without answering: the call took effect and the caller cannot know.
    Lost,
}

/// EC2's HTTP status for an error code.
pub fn status_of(code: &str) -> u16 {
    match code {
        "RequestLimitExceeded" | "ServiceUnavailable" | "Unavailable" => 503,
        "InternalError" | "InternalFailure" | "InternalServerError" => 500,
        "UnauthorizedOperation" | "AuthFailure" | "AccessDenied" => 403,
        // SnapshotCreationPerVolumeRateExceeded, ConcurrentSnapshotLimitExceeded, SSM's ThrottlingException and other
        // client errors.
        _ => 400,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum When {
    /// Each matching request with this probability.
    Rate(f64),
    /// The k-th matching requests, counted from 1 per rule.
    Calls(Vec<usize>),
    Always,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Actions the rule applies to; empty: every action.
    pub actions: Vec<&'static str>,
    /// The signing region the rule applies to; None: every region.
    pub region: Option<&'static str>,
    /// A query-protocol parameter and its value as sent (URL-encoded) that the request must carry; None: any.
    pub param: Option<(&'static str, String)>,
    pub when: When,
    pub fault: Fault,
}

impl Rule {
    pub fn new(actions: &[&'static str], when: When, fault: Fault) -> Rule {
        Rule {
            actions: actions.to_vec(),
            region: None,
            param: None,
            when,
            fault,
        }
    }

    /// The same rule, for requests signed for `region` only.
    pub fn in_region(self, region: &'static str) -> Rule {
        Rule {
            region: Some(region),
            ..self
        }
    }

    /// The same rule, for requests whose parameter `name` is `value` as sent (URL-encoded): an AssumeRole of one
    /// `RoleArn`, a call about one `VolumeId`.
    pub fn with_param(self, name: &'static str, value: &str) -> Rule {
        Rule {
            param: Some((name, value.to_string())),
            ..self
        }
    }

    fn applies(&self, action: &str, region: &str, body: &str) -> bool {
        (self.actions.is_empty() || self.actions.contains(&action))
            && self.region.is_none_or(|r| r == region)
            && self
                .param
                .as_ref()
                .is_none_or(|(k, v)| param(body, k).as_deref() == Some(v.as_str()))
    }
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    /// The region the request was signed for (`-` when unsigned).
    pub region: String,
    pub action: String,
    /// `forwarded`, `delayed`, `rewritten`, `late`, `lost`, `reset`, or the injected error code.
    pub outcome: String,
    /// The form body (query-protocol parameters): which snapshot or volume the request was about.
    pub body: String,
}

impl Hit {
    /// A query-protocol parameter of the request (`SnapshotId`, `VolumeId`), as sent.
    pub fn param(&self, name: &str) -> Option<String> {
        param(&self.body, name)
    }
}

/// A query-protocol parameter of a form body, as sent.
fn param(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

struct State {
    rules: Vec<Rule>,
    /// Matching requests seen per rule index (for `When::Calls`).
    seen: HashMap<usize, usize>,
    rng: StdRng,
    log: Vec<Hit>,
}

pub struct FaultProxy {
    pub port: u16,
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Starts a proxy to moto on `upstream`, with no rules (everything forwarded).
    pub fn start(upstream: u16, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            rules: Vec::new(),
            seen: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
            log: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, halt) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(client, upstream, &st));
            }
        });
        FaultProxy {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            state,
            stop,
        }
    }

    /// Replaces the rules (and their call counters); the log and the RNG carry on.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        let mut st = self.state.lock().unwrap();
        st.rules = rules;
        st.seen.clear();
    }

    pub fn log(&self) -> Vec<Hit> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// How many requests of `action` ended with `outcome`.
    pub fn count(&self, action: &str, outcome: &str) -> usize {
        self.log()
            .iter()
            .filter(|h| h.action == action && h.outcome == outcome)
            .count()
    }

    /// Arrival times of the requests for any of `actions`, in order.
    pub fn times(&self, actions: &[&str]) -> Vec<Instant> {
        let mut t: Vec<Instant> = self
            .log()
            .iter()
            .filter(|h| actions.contains(&h.action.as_str()))
            .map(|h| h.at)
            .collect();
        t.sort();
        t
    }

    /// The most requests for any of `actions` that arrived within one `window` (a sliding window starting at
    /// each request).
    pub fn max_in_window(&self, actions: &[&str], window: Duration) -> usize {
        let t = self.times(actions);
        (0..t.len())
            .map(|i| t[i..].iter().take_while(|&&x| x - t[i] < window).count())
            .max()
            .unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One HTTP/1.1 request as read off a client connection (also read by the SSM agent stand-in, `ssm_agent.rs`).
pub(super) struct Request {
    pub(super) head: Vec<String>,
    pub(super) body: Vec<u8>,
}

pub(super) fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let len = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request { head, body })
}

pub(super) fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn action_of(req: &Request) -> String {
    if let Some(target) = header(&req.head, "x-amz-target") {
        return target.rsplit('.').next().unwrap_or(target).to_string();
    }
    String::from_utf8_lossy(&req.body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action=").map(str::to_string))
        .unwrap_or_else(|| "-".into())
}

/// The region of the SigV4 credential scope (`Credential=<key>/<date>/<region>/<service>/aws4_request`).
fn region_of(req: &Request) -> String {
    header(&req.head, "authorization")
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|scope| scope.split('/').nth(2))
        .unwrap_or("-")
        .to_string()
}

/// The service of the SigV4 credential scope (`ec2`, `sts`, …; `-` when unsigned).
fn service_of(req: &Request) -> String {
    header(&req.head, "authorization")
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|scope| scope.split('/').nth(3))
        .unwrap_or("-")
        .to_string()
}

fn decide(state: &Mutex<State>, action: &str, region: &str, body: &str) -> Option<Fault> {
    let mut st = state.lock().unwrap();
    let st = &mut *st;
    for (i, rule) in st.rules.iter().enumerate() {
        if !rule.applies(action, region, body) {
            continue;
        }
        let n = {
            let n = st.seen.entry(i).or_default();
            *n += 1;
            *n
        };
        let fire = match &rule.when {
            When::Always => true,
            When::Calls(ks) => ks.contains(&n),
            When::Rate(p) => st.rng.random_bool(*p),
        };
        if fire {
            return Some(rule.fault.clone());
        }
    }
    None
}

fn log(state: &Mutex<State>, at: Instant, req: &Request, action: &str, outcome: &str) {
    state.lock().unwrap().log.push(Hit {
        at,
        region: region_of(req),
        action: action.to_string(),
        outcome: outcome.to_string(),
        body: String::from_utf8_lossy(&req.body).into_owned(),
    });
}

fn serve(client: TcpStream, upstream: u16, state: &Mutex<State>) {
    let mut writer = client.try_clone().expect("clone client socket");
    let mut reader = BufReader::new(client);
    while let Some(req) = read_request(&mut reader) {
        let at = Instant::now();
        let action = action_of(&req);
        let fault = decide(
            state,
            &action,
            &region_of(&req),
            &String::from_utf8_lossy(&req.body),
        );
        let response = match fault {
            Some(Fault::Error(code)) => {
                log(state, at, &req, &action, code);
                error_response(
                    code,
                    header(&req.head, "x-amz-target").is_some(),
                    service_of(&req) == "sts",
                )
            }
            Some(Fault::Reset) => {
                log(state, at, &req, &action, "reset");
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::Delay(d)) => {
                log(state, at, &req, &action, "delayed");
                std::thread::sleep(d);
                match forward(&req, upstream, &[]) {
                    Some(r) => r,
                    None => return,
                }
            }
            Some(Fault::Lost) => {
                log(state, at, &req, &action, "lost");
                let _ = forward(&req, upstream, &[]);
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::Late(d)) => {
                log(state, at, &req, &action, "late");
                let answer = forward(&req, upstream, &[]);
                std::thread::sleep(d);
                match answer {
                    Some(r) => r,
                    None => return,
                }
            }
            Some(Fault::Rewrite(pairs)) => {
                log(state, at, &req, &action, "rewritten");
                match forward(&req, upstream, &pairs) {
                    Some(r) => r,
                    None => return,
                }
            }
            None => {
                log(state, at, &req, &action, "forwarded");
                match forward(&req, upstream, &[]) {
                    Some(r) => r,
                    None => return,
                }
            }
        };
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

/// The error answer for `code`: JSON (`__type`, as SSM writes it) for a JSON-protocol request, STS's
/// `ErrorResponse` XML for STS (the SDK finds no code in EC2's shape there), else EC2's XML.
fn error_response(code: &str, json: bool, sts: bool) -> Vec<u8> {
    if json {
        let body = format!("{{\"__type\":\"{code}\",\"message\":\"injected by the fault proxy\"}}");
        let mut out = format!(
            "HTTP/1.1 {} Injected\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
            status_of(code),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        return out;
    }
    let body = if sts {
        format!(
            "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected by the fault \
             proxy</Message></Error><RequestId>00000000-0000-4000-8000-000000000000</RequestId></ErrorResponse>"
        )
    } else {
        format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>injected by \
         the fault proxy</Message></Error></Errors><RequestID>00000000-0000-4000-8000-000000000000</RequestID></Response>"
        )
    };
    let status = status_of(code);
    let mut out = format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Sends `req` to moto on a fresh connection and returns the answer framed for a kept-alive client, with each
/// `(from, to)` of `rewrite` replaced in its body.
pub(super) fn forward(
    req: &Request,
    upstream: u16,
    rewrite: &[(String, String)],
) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).ok()?;
    up.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut out = format!("{}\r\n", req.head[0]);
    for h in &req.head[1..] {
        let name = h.split(':').next().unwrap_or_default().trim();
        if !name.eq_ignore_ascii_case("connection") {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes()).ok()?;
    up.write_all(&req.body).ok()?;

    let mut r = BufReader::new(up);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body
    } else if let Some(n) = header(&head, "content-length").and_then(|v| v.parse().ok()) {
        let mut body = vec![0; n];
        r.read_exact(&mut body).ok()?;
        body
    } else {
        let mut body = Vec::new();
        r.read_to_end(&mut body).ok()?;
        body
    };
    let body = if rewrite.is_empty() {
        body
    } else {
        let mut text = String::from_utf8(body).ok()?;
        for (from, to) in rewrite {
            text = text.replace(from.as_str(), to);
        }
        text.into_bytes()
    };
    let mut resp = format!("{}\r\n", head[0]);
    for h in &head[1..] {
        let name = h.split(':').next().unwrap_or_default().trim();
        if ![
            "connection",
            "content-length",
            "transfer-encoding",
            "keep-alive",
        ]
        .iter()
        .any(|x| name.eq_ignore_ascii_case(x))
        {
            resp.push_str(h);
            resp.push_str("\r\n");
        }
    }
    resp.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = resp.into_bytes();
    bytes.extend_from_slice(&body);
    Some(bytes)
}
