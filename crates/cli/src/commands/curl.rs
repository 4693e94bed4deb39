//! `strato curl METHOD PATH [BODY]`: a raw call with the session's token, for poking at the
//! API. Prints the body (pretty when JSON); an HTTP error status exits 1.

use super::Ctx;
use crate::api::Api;
use crate::error::usage;
use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::Value;

pub async fn curl(ctx: &Ctx, method: &str, path: &str, body: Option<&str>) -> Result<()> {
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        return usage(format!(
            "{method:?} is not an HTTP method; use GET, POST, PUT or DELETE"
        ));
    };
    if !path.starts_with('/') && !path.starts_with("http") {
        return usage(format!("{path:?} is not a path; write it like /v2/apps"));
    }
    if let Some(b) = body {
        if serde_json::from_str::<Value>(b).is_err() {
            return usage("the body is not valid JSON");
        }
    }
    let target = ctx.target()?;
    let session = ctx.saved_session(&target)?;
    let api = if session.logged_in() {
        Api::with_session(&target.url, &session, ctx.store.clone())?
    } else {
        Api::anonymous(&target.url, &session)?
    };
    let url = api.url(path);
    let build = |c: &reqwest::Client| {
        let r = c.request(method.clone(), &url);
        match body {
            Some(b) => r
                .header("Content-Type", "application/json")
                .body(b.to_string()),
            None => r,
        }
    };
    let response = if session.logged_in() {
        api.send_raw(build).await?
    } else {
        api.send_anonymous(build).await?
    };
    let status = response.status();
    let text = response.text().await.context("cannot read the response")?;
    match serde_json::from_str::<Value>(&text) {
        Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
        Err(_) if text.is_empty() => {}
        Err(_) => println!("{text}"),
    }
    if !status.is_success() {
        bail!("{method} {path} answered HTTP {status}");
    }
    Ok(())
}
