//! Planned failures for tests of callers (`--allow-faults`): the next N embeddings
//! requests (or all of them) are answered with a chosen status in OpenAI's error
//! shape, with `Retry-After` when asked. Set with `PUT /_faults`, cleared with
//! `DELETE /_faults`, read with `GET /_faults`. Without the flag these routes are 404.
//!
//! With `input_contains`, only requests one of whose inputs contains that text are
//! refused, with 400 `invalid_request_error` as OpenAI refuses an input it will not
//! embed (too long, or against its policy): one bad entry in a batch of many.

use crate::api::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Mutex;

/// What to answer instead of embeddings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// 429, or a 5xx.
    pub status: u16,
    /// How many requests get it; absent: every request until cleared.
    #[serde(default)]
    pub times: Option<u32>,
    /// Seconds for a `Retry-After` header.
    #[serde(default)]
    pub retry_after: Option<u32>,
    /// Refuse (400) only requests with an input containing this.
    #[serde(default)]
    pub input_contains: Option<String>,
}

/// The planned fault and how many requests it has answered.
#[derive(Debug, Default)]
pub struct Faults {
    inner: Mutex<(Option<Fault>, u64)>,
}

impl Faults {
    /// Parse and install a fault (replacing any other); the count restarts.
    pub fn set(&self, body: &[u8]) -> Result<Value, ApiError> {
        let fault: Fault = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid(400, "invalid_fault", None, format!("a fault is {{status, times?, retry_after?}}: {e}"))
        })?;
        match (&fault.input_contains, fault.status) {
            (Some(t), 400) if !t.is_empty() => {}
            (Some(_), _) => {
                return Err(ApiError::invalid(
                    400,
                    "invalid_fault",
                    Some("status"),
                    "with input_contains, status must be 400 (and the text non-empty)",
                ))
            }
            (None, s) if s == 429 || (500..=599).contains(&s) => {}
            (None, _) => {
                return Err(ApiError::invalid(400, "invalid_fault", Some("status"), "status must be 429 or 5xx"))
            }
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *g = (Some(fault), 0);
        Ok(describe(&g))
    }

    pub fn clear(&self) -> Value {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = None;
        describe(&g)
    }

    pub fn get(&self) -> Value {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        describe(&g)
    }

    /// The fault this request gets, if any (counting it down). `inputs` is `None`
    /// before the body is read (then an input-matched fault does not apply yet).
    pub fn take(&self, inputs: Option<&[String]>) -> Option<(ApiError, Option<u32>)> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let fault = g.0.clone()?;
        let refused = match (&fault.input_contains, inputs) {
            (None, None) => None,
            (Some(text), Some(inputs)) => Some(inputs.iter().position(|i| i.contains(text.as_str()))?),
            _ => return None,
        };
        match fault.times {
            Some(0) => {
                g.0 = None;
                return None;
            }
            Some(n) => {
                g.0 = if n == 1 { None } else { Some(Fault { times: Some(n - 1), ..fault.clone() }) };
            }
            None => {}
        }
        g.1 += 1;
        let error = if let Some(i) = refused {
            ApiError::invalid(
                400,
                "invalid_input",
                Some("input"),
                format!("`input[{i}]` was refused (a planned fault of the local embeddings server)."),
            )
        } else if fault.status == 429 {
            ApiError {
                status: 429,
                message: "Rate limit reached (a planned fault of the local embeddings server).".into(),
                kind: "requests",
                param: None,
                code: "rate_limit_exceeded",
            }
        } else {
            ApiError::server(
                fault.status,
                "server_error",
                "The server had an error while processing your request (a planned fault).",
            )
        };
        Some((error, fault.retry_after))
    }
}

/// `{fault, answered}`: what is planned, and how many requests it has answered.
fn describe(g: &(Option<Fault>, u64)) -> Value {
    let fault = g.0.as_ref().map(|f| {
        json!({"status": f.status, "times": f.times, "retry_after": f.retry_after, "input_contains": f.input_contains})
    });
    json!({"fault": fault, "answered": g.1})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_fault_refuses_only_requests_with_that_input() {
        let f = Faults::default();
        assert!(f.set(br#"{"status": 500, "input_contains": "x"}"#).is_err());
        assert!(f.set(br#"{"status": 400}"#).is_err());
        f.set(br#"{"status": 400, "input_contains": "POISON"}"#).unwrap();
        assert!(f.take(None).is_none(), "not before the body is read");
        let fine = ["a".to_owned(), "b".to_owned()];
        assert!(f.take(Some(&fine)).is_none());
        let bad = ["a".to_owned(), "has POISON in it".to_owned()];
        let (e, _) = f.take(Some(&bad)).unwrap();
        assert_eq!((e.status, e.code, e.param), (400, "invalid_input", Some("input")));
        assert!(e.message.contains("input[1]"), "{}", e.message);
        assert!(f.take(Some(&bad)).is_some(), "until cleared");
        assert_eq!(f.get()["answered"], 2);
    }

    #[test]
    fn a_counted_fault_answers_that_many_requests_then_clears() {
        let f = Faults::default();
        assert!(f.take(None).is_none());
        f.set(br#"{"status": 429, "times": 2, "retry_after": 1}"#).unwrap();
        let (e, ra) = f.take(None).unwrap();
        assert_eq!((e.status, e.code, ra), (429, "rate_limit_exceeded", Some(1)));
        assert!(f.take(None).is_some());
        assert!(f.take(None).is_none());
        assert_eq!(f.get(), json!({"fault": null, "answered": 2}));
    }

    #[test]
    fn an_open_ended_fault_lasts_until_cleared() {
        let f = Faults::default();
        f.set(br#"{"status": 500}"#).unwrap();
        for _ in 0..10 {
            assert_eq!(f.take(None).unwrap().0.status, 500);
        }
        assert_eq!(f.clear()["answered"], 10);
        assert!(f.take(None).is_none());
    }

    #[test]
    fn only_429_and_5xx_with_known_fields() {
        let f = Faults::default();
        for bad in [&br#"{"status": 404}"#[..], br#"{"status": 500, "nope": 1}"#, b"{", br#"{"times": 1}"#] {
            assert_eq!(f.set(bad).unwrap_err().code, "invalid_fault");
        }
        assert!(f.take(None).is_none());
    }
}
