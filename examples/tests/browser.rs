//! A WebDriver session on headless Chromium (Debian's `chromium` and `chromium-driver`, which `.ci/run`
//! installs), spoken over plain HTTP: enough to open a page, type, click and take a screenshot.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    /// Starts chromedriver on `port` and a headless Chromium session in it.
    pub async fn start(port: u16) -> Self {
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (apt-get install chromium chromium-driver; .ci/run does it)");
        let capabilities = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"]
        }}}});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let session = loop {
            match call(port, "POST", "/session", Some(&capabilities)).await {
                Some(answer) if answer["sessionId"].is_string() => {
                    break answer["sessionId"].as_str().unwrap().to_owned();
                }
                answer if tokio::time::Instant::now() > deadline => {
                    panic!("no Chromium session from chromedriver: {answer:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Self {
            driver,
            port,
            session,
        }
    }

    async fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let answer = call(self.port, method, &path, body)
            .await
            .unwrap_or_else(|| panic!("chromedriver did not answer {method} {path}"));
        assert!(answer.get("error").is_none(), "{method} {path}: {answer}");
        answer
    }

    pub async fn open(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })))
            .await;
    }

    /// The page's HTML as the browser has it now.
    pub async fn source(&self) -> String {
        self.command("GET", "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML once it contains `text` (a click's navigation may still be under way when it returns).
    pub async fn wait_for(&self, text: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let page = self.source().await;
            if page.contains(text) {
                return page;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {text:?}:\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first element `css` selects.
    pub async fn find(&self, css: &str) -> String {
        let answer = self
            .command(
                "POST",
                "/element",
                Some(&json!({"using": "css selector", "value": css})),
            )
            .await;
        answer
            .as_object()
            .and_then(|element| element.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element for {css}: {answer}"))
            .to_owned()
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            Some(&json!({ "text": text })),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command(
            "POST",
            &format!("/element/{element}/click"),
            Some(&json!({})),
        )
        .await;
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let answer = self.command("GET", "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(answer.as_str().unwrap_or_default())
            .expect("a base64 PNG")
    }

    pub async fn quit(mut self) {
        let _ = call(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        )
        .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver request; its `value`, or `None` when chromedriver does not answer (yet).
async fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Option<Value> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    // Read up to the body's length: chromedriver may keep the connection open after answering.
    let mut response = Vec::new();
    let mut buffer = [0u8; 8192];
    let body = loop {
        let n = stream.read(&mut buffer).await.ok()?;
        response.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())
                    .flatten()
            });
            match length {
                Some(length) if body.len() >= length => break body[..length].to_owned(),
                None if n == 0 => break dechunk(body),
                _ => {}
            }
        }
        if n == 0 {
            return None;
        }
    };
    let answer: Value = serde_json::from_str(&body).ok()?;
    Some(answer["value"].clone())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
