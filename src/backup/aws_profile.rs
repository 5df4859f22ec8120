//! The AWS shared profile files (`~/.aws/credentials`, `~/.aws/config`):
//! what the AWS CLI and SDKs read when the environment does not say.
//!
//! `object_store` reads only the `AWS_*` environment variables, so an
//! operator whose keys live in a profile (`aws configure`) would otherwise
//! have to export them by hand. The environment still wins, as in the CLI.

use std::path::PathBuf;

use ini::Ini;

use crate::error::{Error, Result};

/// What a profile sets, as `object_store` config keys and values.
pub fn settings() -> Result<Vec<(&'static str, String)>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let mut out = Vec::new();
    // In `credentials` a section is the profile's name; in `config` it is
    // `profile NAME`, except for `default`.
    let sources = [
        (
            file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            profile.clone(),
        ),
        (
            file("AWS_CONFIG_FILE", "config"),
            if profile == "default" {
                profile.clone()
            } else {
                format!("profile {profile}")
            },
        ),
    ];
    let keys = [
        (
            "aws_access_key_id",
            "AWS_ACCESS_KEY_ID",
            "aws_access_key_id",
        ),
        (
            "aws_secret_access_key",
            "AWS_SECRET_ACCESS_KEY",
            "aws_secret_access_key",
        ),
        (
            "aws_session_token",
            "AWS_SESSION_TOKEN",
            "aws_session_token",
        ),
        ("region", "AWS_REGION", "aws_region"),
        ("endpoint_url", "AWS_ENDPOINT_URL", "aws_endpoint"),
    ];
    let mut found_profile = profile == "default";
    for (path, section) in sources {
        let Some(path) = path.filter(|p| p.exists()) else {
            continue;
        };
        let ini = Ini::load_from_file(&path).map_err(|e| {
            Error::Failed(format!("{}: not an AWS profile file: {e}", path.display()))
        })?;
        let Some(props) = ini.section(Some(section.as_str())) else {
            continue;
        };
        found_profile = true;
        for (name, var, key) in keys {
            let in_env = env(var).is_some()
                || (var == "AWS_REGION" && env("AWS_DEFAULT_REGION").is_some())
                || (var == "AWS_ENDPOINT_URL" && env("AWS_ENDPOINT").is_some());
            if in_env || out.iter().any(|(k, _)| *k == key) {
                continue;
            }
            if let Some(value) = props.get(name) {
                out.push((key, value.to_string()));
            }
        }
    }
    if !found_profile {
        return Err(Error::usage(format!(
            "AWS_PROFILE={profile}: no such profile in the AWS credentials or config file"
        )));
    }
    Ok(out)
}
