//! The completions (`/v1/completions`, `/v1/chat/completions`): validating a request, then
//! generating its echo (streamed or whole), with the fault knobs that hang, slow or cut it.

use super::*;

/// Whether the client has closed its side (a non-blocking peek sees EOF or an error).
fn client_gone(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let r = stream.peek(&mut b);
    let _ = stream.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// Decrements `num_requests_running` when a request ends, unless it hung (then it stays).
struct Running<'a>(&'a Engine, bool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.running.fetch_sub(1, SeqCst);
        }
    }
}

/// The text of an OpenAI message `content`: a string, or an array of `{type:"text",text}` parts.
fn content_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// What a completion request asks for, validated.
pub(super) struct Ask {
    pub(super) model: String,
    pub(super) prompt_tokens: u64,
    pub(super) echo: Vec<String>,
    pub(super) n: u64,
    pub(super) finish: usize,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
}

impl Engine {
    /// Validate a completion request body.
    pub(super) fn ask(&self, req: &Request, chat: bool) -> Result<Ask, Outcome> {
        let bad = |m: &str| error_reply(400, "BadRequestError", m, None);
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Err(bad("the request body must be a JSON object")),
            Err(e) => return Err(bad(&format!("JSON decode error: {e}"))),
        };
        let model = match body.get("model") {
            None | Some(Value::Null) => self.settings.names[0].clone(),
            Some(Value::String(m)) if self.settings.names.contains(m) => m.clone(),
            Some(m) => {
                let m = m
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| m.to_string());
                return Err(error_reply(
                    404,
                    "NotFoundError",
                    &format!("The model `{m}` does not exist."),
                    Some("model"),
                ));
            }
        };
        let (all, echo) = if chat {
            let Some(msgs) = body.get("messages").and_then(Value::as_array) else {
                return Err(bad("'messages' is required and must be an array"));
            };
            let texts: Vec<(String, String)> = msgs
                .iter()
                .map(|m| {
                    let role = m
                        .get("role")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    (role, m.get("content").map(content_text).unwrap_or_default())
                })
                .collect();
            let all = texts
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let echo = texts
                .iter()
                .rev()
                .find(|(r, _)| r == "user")
                .or(texts.last())
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            (all, echo)
        } else {
            let text = match body.get("prompt") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) if !a.is_empty() => a
                    .iter()
                    .map(|p| match p {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => return Err(bad("'prompt' is required (a string or an array)")),
            };
            (text.clone(), text)
        };
        let prompt_tokens = all.split_whitespace().count().max(1) as u64;
        let mut echo: Vec<String> = echo.split_whitespace().map(str::to_string).collect();
        if echo.is_empty() {
            echo.push("ok".into());
        }
        let max_tokens = match body.get("max_tokens").filter(|v| !v.is_null()).or_else(|| {
            chat.then(|| body.get("max_completion_tokens"))
                .flatten()
                .filter(|v| !v.is_null())
        }) {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Some(n),
                _ => return Err(bad(&format!("max_tokens must be at least 1, got {v}."))),
            },
        };
        let len = self.settings.max_model_len;
        let room = len.saturating_sub(prompt_tokens);
        if let Some(m) = max_tokens {
            if prompt_tokens + m > len {
                return Err(bad(&format!(
                    "This model's maximum context length is {len} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {m} in the completion). Please reduce the length of the messages or completion.",
                    prompt_tokens + m
                )));
            }
        } else if room == 0 {
            return Err(bad(&format!(
                "This model's maximum context length is {len} tokens. However, your request has {prompt_tokens} input tokens. Please reduce the length of the input messages."
            )));
        }
        let (n, finish) = match max_tokens {
            Some(m) => (m, LENGTH),
            None => {
                let want = echo.len().min(DEFAULT_ECHO_TOKENS) as u64;
                if want > room {
                    (room, LENGTH)
                } else {
                    (want, STOP)
                }
            }
        };
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Ask {
            model,
            prompt_tokens,
            echo,
            n,
            finish,
            stream,
            include_usage,
        })
    }

    /// `POST /v1/completions` and `/v1/chat/completions`: echo the prompt, one token (word) at a
    /// time, counting tokens as they are produced.
    pub(super) fn complete(&self, req: &Request, stream: &TcpStream, chat: bool) -> Outcome {
        if self.draining.load(SeqCst) {
            return error_reply(
                503,
                "ServiceUnavailableError",
                "The server is shutting down",
                None,
            );
        }
        let ask = match self.ask(req, chat) {
            Ok(a) => a,
            Err(o) => return o,
        };
        let id = self.new_id(if chat { "chatcmpl" } else { "cmpl" });
        let created = unix_now() as u64;
        self.running.fetch_add(1, SeqCst);
        let mut running = Running(self, false);
        self.prompt_tokens.fetch_add(ask.prompt_tokens, SeqCst);
        let chunk = |delta: &str, first: bool, finish: Option<&str>| -> Value {
            if chat {
                let d = match (first, finish) {
                    (_, Some(_)) => json!({}),
                    (true, None) => json!({"role": "assistant", "content": delta}),
                    (false, None) => json!({"content": delta}),
                };
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": ask.model,
                       "choices": [{"index": 0, "delta": d, "logprobs": null, "finish_reason": finish, "stop_reason": null}]})
            } else {
                json!({"id": id, "object": "text_completion", "created": created, "model": ask.model,
                       "choices": [{"index": 0, "text": delta, "logprobs": null, "finish_reason": finish, "stop_reason": null}]})
            }
        };
        let mut out = stream;
        if ask.stream {
            let h = http::head(200, Some("text/event-stream; charset=utf-8"), None, false);
            if out.write_all(h.as_bytes()).is_err() {
                self.finished[ABORT].fetch_add(1, SeqCst);
                return Outcome::Done(200);
            }
        }
        let mut text = String::new();
        for i in 0..ask.n {
            let delay = self.settings.token_delay;
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            if self.hung() {
                // A hung engine: the request stays "running", no token comes, no answer.
                running.1 = true;
                hold(stream);
                return Outcome::Held;
            }
            let word = &ask.echo[i as usize % ask.echo.len()];
            let piece = if i == 0 {
                word.clone()
            } else {
                format!(" {word}")
            };
            // The token was produced (and counted) even if its client has just left.
            self.generation_tokens.fetch_add(1, SeqCst);
            if !delay.is_zero() && client_gone(stream) {
                self.finished[ABORT].fetch_add(1, SeqCst);
                return Outcome::Dropped;
            }
            if ask.stream {
                let ev = format!("data: {}\n\n", chunk(&piece, i == 0, None));
                if out
                    .write_all(ev.as_bytes())
                    .and_then(|_| out.flush())
                    .is_err()
                {
                    self.finished[ABORT].fetch_add(1, SeqCst);
                    return Outcome::Done(200);
                }
            }
            text.push_str(&piece);
        }
        let finish = FINISH_REASONS[ask.finish];
        let usage = json!({"prompt_tokens": ask.prompt_tokens, "total_tokens": ask.prompt_tokens + ask.n, "completion_tokens": ask.n});
        self.finished[ask.finish].fetch_add(1, SeqCst);
        drop(running);
        if ask.stream {
            let mut ev = format!("data: {}\n\n", chunk("", ask.n == 0, Some(finish)));
            if ask.include_usage {
                let mut u = chunk("", false, None);
                u["choices"] = json!([]);
                u["usage"] = usage;
                ev.push_str(&format!("data: {u}\n\n"));
            }
            ev.push_str("data: [DONE]\n\n");
            let _ = out.write_all(ev.as_bytes()).and_then(|_| out.flush());
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return Outcome::Done(200);
        }
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                   "logprobs": null, "finish_reason": finish, "stop_reason": null})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish, "stop_reason": null})
        };
        json_reply(
            200,
            &json!({"id": id, "object": if chat { "chat.completion" } else { "text_completion" },
                    "created": created, "model": ask.model, "choices": [choice], "usage": usage}),
        )
    }
}
