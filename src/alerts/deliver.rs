//! Delivering alerts: a webhook POST (mailgate's JSON, a Teams Adaptive Card message or a
//! Slack message) or an email through a provider that is not the alert's subject.
//! Retried with backoff from 5 seconds doubling to 5 minutes; counted in
//! `mailgate_alerts_sent_total{alert,event}` and `mailgate_alert_failures_total{alert}`.

use serde_json::{Value, json};

use super::{Alerts, Condition, Pending};
use crate::config::{AlertConfig, AlertEvent, AlertFormat, Config};
use crate::snapshot::Core;
use crate::time::{now_ms, rfc3339};

/// The first retry of an alert that could not be delivered, then doubling.
const FIRST_RETRY_MS: u64 = 5_000;
/// The longest wait between tries.
const MAX_RETRY_MS: u64 = 300_000;

/// What `mailgate alert test` reports of one alert.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TestResult {
    /// The alert's name.
    pub alert: String,
    /// Delivered.
    pub ok: bool,
    /// Where it went, or why it did not.
    pub detail: String,
}

/// This node's name in alerts: the one the fleet uses (`fleet.node`, else the host name).
fn node(config: &Config) -> String {
    crate::fleet::node_name(config)
}

/// The body of an alert in mailgate's own JSON (SPEC).
pub fn json_body(state: &str, c: &Condition, node: &str, test: bool) -> Value {
    let mut v = json!({
        "event": c.event.as_str(),
        "state": state,
        "node": node,
        "provider": c.provider,
        "summary": c.summary,
        "details": c.details,
        "since": rfc3339(c.since_ms),
        "messages": c.messages,
    });
    if c.event == AlertEvent::Failed && state == "firing" {
        v["count"] = json!(c.count);
    }
    if test {
        v["test"] = json!(true);
    }
    v
}

/// The title line of an alert.
fn title(state: &str, c: &Condition, node: &str) -> String {
    let mark = if state == "firing" {
        "FIRING"
    } else {
        "RESOLVED"
    };
    format!("[mailgate {node}] {mark} {}: {}", c.event, c.summary)
}

/// The body for the alert's format.
fn body(format: AlertFormat, state: &str, c: &Condition, node: &str, test: bool) -> Value {
    let ids: Vec<String> = c
        .messages
        .iter()
        .map(|m| format!("{} ({})", m.id, m.diagnosis))
        .collect();
    match format {
        AlertFormat::Json => json_body(state, c, node, test),
        // A Teams Workflows webhook takes a message whose attachment is an Adaptive Card.
        AlertFormat::Teams => {
            let mut facts = vec![
                json!({"title": "Event", "value": c.event.as_str()}),
                json!({"title": "State", "value": state}),
                json!({"title": "Node", "value": node}),
                json!({"title": "Since", "value": rfc3339(c.since_ms)}),
            ];
            if let Some(p) = &c.provider {
                facts.push(json!({"title": "Provider", "value": p}));
            }
            let mut card_body = vec![
                json!({"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true, "text": title(state, c, node)}),
                json!({"type": "FactSet", "facts": facts}),
            ];
            if !c.details.is_empty() {
                card_body.push(json!({"type": "TextBlock", "wrap": true, "text": c.details}));
            }
            if !ids.is_empty() {
                card_body
                    .push(json!({"type": "TextBlock", "wrap": true, "text": ids.join("\n\n")}));
            }
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": card_body,
                    }
                }]
            })
        }
        // A Slack incoming webhook takes `text` (the notification) and optional blocks.
        AlertFormat::Slack => {
            let mut text = title(state, c, node);
            if !c.details.is_empty() {
                text.push('\n');
                text.push_str(&c.details);
            }
            let mut blocks =
                vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})];
            if !ids.is_empty() {
                blocks.push(
                    json!({"type": "section", "text": {"type": "mrkdwn", "text": ids.join("\n")}}),
                );
            }
            json!({"text": title(state, c, node), "blocks": blocks})
        }
    }
}

impl Alerts {
    /// Delivers every queued alert that is due; keeps the rest with their next time.
    pub(super) async fn deliver_due(&self, app: &Core, config: &Config) {
        let now = now_ms();
        let due: Vec<Pending> = match self.state.lock() {
            Ok(s) => s
                .outbox
                .iter()
                .filter(|p| p.next_ms <= now)
                .cloned()
                .collect(),
            Err(_) => return,
        };
        for p in due {
            let Some(a) = config.alert.iter().find(|a| a.name.get_ref() == &p.alert) else {
                // The alert left the configuration: its queue goes with it.
                self.finish(&p, None).await;
                continue;
            };
            let outcome = self
                .send(app, config, a, &p.state, &p.condition, false)
                .await;
            self.finish(&p, Some(outcome)).await;
        }
    }

    /// Records a delivery's outcome: gone from the queue, or tried again later.
    async fn finish(&self, p: &Pending, outcome: Option<Result<String, String>>) {
        let Some(bytes) = self.finished(p, outcome) else {
            return;
        };
        self.save(bytes).await;
    }

    /// [`finish`](Self::finish) in memory; the state to save when it changed.
    fn finished(&self, p: &Pending, outcome: Option<Result<String, String>>) -> Option<Vec<u8>> {
        let mut s = self.state.lock().ok()?;
        let at = s
            .outbox
            .iter()
            .position(|q| q.alert == p.alert && q.state == p.state && q.condition == p.condition)?;
        match outcome {
            None => {
                s.outbox.remove(at);
            }
            Some(Ok(to)) => {
                tracing::info!(alert = %p.alert, event = %p.condition.event, state = %p.state, to = %to, "alert sent");
                s.outbox.remove(at);
            }
            Some(Err(e)) => {
                let q = &mut s.outbox[at];
                q.tries += 1;
                let wait = (FIRST_RETRY_MS << q.tries.min(10).saturating_sub(1)).min(MAX_RETRY_MS);
                q.next_ms = now_ms() + wait;
                tracing::warn!(alert = %p.alert, event = %p.condition.event, error = %e, retry_in_s = wait / 1000, "cannot deliver an alert; trying again later");
            }
        }
        serde_json::to_vec_pretty(&*s).ok()
    }

    /// One try: the webhook POST or the alert email. Ok: where it went.
    async fn send(
        &self,
        app: &Core,
        config: &Config,
        a: &AlertConfig,
        state: &str,
        c: &Condition,
        test: bool,
    ) -> Result<String, String> {
        let metrics = app.pipeline.metrics();
        let name = a.name.get_ref().clone();
        let node = node(config);
        let result = if let Some(url) = &a.webhook_url {
            let body = body(a.format, state, c, &node, test);
            match self.http.post(url.get_ref()).json(&body).send().await {
                Ok(r) if r.status().is_success() => Ok(url.get_ref().clone()),
                Ok(r) => Err(format!("{} answered {}", url.get_ref(), r.status())),
                Err(e) => Err(format!("{}: {e}", url.get_ref())),
            }
        } else if let Some(to) = &a.email {
            let mut chain: Vec<String> = a.provider.iter().map(|p| p.get_ref().clone()).collect();
            chain.extend(config.default_chain());
            let provider = chain
                .into_iter()
                .find(|p| c.provider.as_deref() != Some(p.as_str()));
            match provider {
                None => Err(format!(
                    "no provider to send it through other than {}, which it is about",
                    c.provider.as_deref().unwrap_or("")
                )),
                Some(p) => {
                    let mut text = format!("{}\r\n\r\n{}\r\n", title(state, c, &node), c.details);
                    for m in &c.messages {
                        text.push_str(&format!("  {} ({})\r\n", m.id, m.diagnosis));
                    }
                    app.distributor
                        .send_own(config, &p, to.get_ref(), &title(state, c, &node), &text)
                        .await
                        .map(|id| format!("{} through {p} (message {id})", to.get_ref()))
                        .map_err(|e| e.to_string())
                }
            }
        } else {
            Err("neither webhook_url nor email".into())
        };
        match &result {
            Ok(_) => metrics
                .alerts_sent
                .get_or_create(&crate::metrics::AlertEventLabel {
                    alert: name,
                    event: c.event.to_string(),
                })
                .inc(),
            Err(_) => metrics
                .alert_failures
                .get_or_create(&crate::metrics::AlertLabel { alert: name })
                .inc(),
        };
        result
    }

    /// `mailgate alert test`: one test alert to each (or the named) alert, one try each.
    pub async fn test(&self, app: &Core, only: Option<&str>) -> Vec<TestResult> {
        let config = app.pipeline.config();
        let c = Condition {
            event: AlertEvent::Test,
            provider: None,
            summary: "a test alert from mailgate alert test".into(),
            details: "if you read this, alerts reach you".into(),
            since_ms: now_ms(),
            messages: Vec::new(),
            count: 0,
        };
        let mut out = Vec::new();
        for a in config
            .alert
            .iter()
            .filter(|a| only.is_none_or(|n| a.name.get_ref() == n))
        {
            let r = self.send(app, &config, a, "firing", &c, true).await;
            out.push(TestResult {
                alert: a.name.get_ref().clone(),
                ok: r.is_ok(),
                detail: r.unwrap_or_else(|e| e),
            });
        }
        out
    }
}
