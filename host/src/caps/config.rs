//! `wasi:config/store`: the policy's `[config]` table, read-only.
//!
//! Grant: `config = true`. Values are strings, numbers or booleans (handed to
//! the plugin as text), or `{ env = "NAME" }` to take a secret from the
//! agent's environment at load time rather than from the file. Values taken
//! from the environment are remembered as secrets so they can be scrubbed
//! from anything the agent prints.

use super::bindings::wasi::config::store::{self, Error};
use super::{Call, CapState, Capability};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

#[derive(Debug, Clone, Default)]
pub struct PluginConfig {
    values: BTreeMap<String, String>,
    secret_keys: Vec<String>,
}

impl PluginConfig {
    /// Reads a policy's `[config]` table. `env` looks variables up (the
    /// process environment in the agent; a map in tests). The error is
    /// (field, message).
    pub fn from_toml(
        table: &toml::Table,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PluginConfig, (String, String)> {
        let mut out = PluginConfig::default();
        for (key, value) in table {
            let field = format!("config.{key}");
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Table(t) if t.len() == 1 && t.contains_key("env") => {
                    let Some(toml::Value::String(var)) = t.get("env") else {
                        return Err((field, "`env` must name an environment variable".into()));
                    };
                    let Some(v) = env(var) else {
                        return Err((field, format!("environment variable {var} is not set")));
                    };
                    out.secret_keys.push(key.clone());
                    v
                }
                _ => {
                    return Err((
                        field,
                        "must be a string, number, boolean or { env = \"NAME\" }".into(),
                    ))
                }
            };
            out.values.insert(key.clone(), text);
        }
        Ok(out)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The values that came from the environment, for scrubbing.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.secret_keys.iter().filter_map(|k| self.get(k))
    }
}

pub struct ConfigCap {
    values: Arc<PluginConfig>,
}

impl ConfigCap {
    pub(crate) fn new(values: Arc<PluginConfig>) -> ConfigCap {
        ConfigCap { values }
    }
}

impl store::Host for ConfigCap {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, Error>> {
        Ok(Ok(self.values.get(&key).map(str::to_string)))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, Error>> {
        Ok(Ok(self
            .values
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()))
    }
}

struct Data;
impl HasData for Data {
    type Data<'a> = &'a mut ConfigCap;
}

impl Capability for ConfigCap {
    type Grant = bool;
    const IMPORTS: &'static [&'static str] = &["wasi:config/store@0.2.0-draft"];
    const EXAMPLE: &'static str = "config = true";

    fn granted(grant: &bool) -> bool {
        *grant
    }

    fn for_call(_: &bool, call: &Call<'_>) -> ConfigCap {
        ConfigCap::new(call.config.clone())
    }

    fn add_to_linker(
        linker: &mut Linker<CapState>,
        get: fn(&mut CapState) -> &mut ConfigCap,
    ) -> wasmtime::Result<()> {
        store::add_to_linker::<CapState, Data>(linker, get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::Host;

    fn parse(text: &str) -> Result<PluginConfig, (String, String)> {
        let t: toml::Table = text.parse().unwrap();
        PluginConfig::from_toml(&t, |v| (v == "API_TOKEN").then(|| "s3cret".to_string()))
    }

    #[test]
    fn scalars_become_text_and_env_values_are_secrets() {
        let c = parse("keep = 7\nrole = \"admin\"\nstrict = true\ntoken = { env = \"API_TOKEN\" }")
            .unwrap();
        let mut cap = ConfigCap::new(Arc::new(c.clone()));
        assert_eq!(
            cap.get("keep".into()).unwrap().unwrap().as_deref(),
            Some("7")
        );
        assert_eq!(cap.get("missing".into()).unwrap().unwrap(), None);
        assert_eq!(cap.get_all().unwrap().unwrap().len(), 4);
        assert_eq!(c.secrets().collect::<Vec<_>>(), ["s3cret"]);
    }

    #[test]
    fn bad_values_name_the_field() {
        assert_eq!(
            parse("token = { env = \"NOPE\" }").unwrap_err().0,
            "config.token"
        );
        let (field, msg) = parse("list = [1, 2]").unwrap_err();
        assert_eq!(field, "config.list");
        assert!(msg.contains("must be a string"), "{msg}");
    }
}
