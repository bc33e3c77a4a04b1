//! Route templates: Jinja syntax, as in Home Assistant (`{{ value_json.action }}`,
//! `{{ value | float * 2.55 }}`, `{{ topic[1] }}`), compiled once at config
//! load by minijinja and rendered per message with a bounded amount of work.
//!
//! Rendered text is read back as a JSON literal when it is one (`127.5`,
//! `true`, `[1,2]`), like HA's native types, so numbers reach HA as numbers.

use std::fmt;
use std::sync::Arc;

use minijinja::value::{Object, ObjectRepr};
use minijinja::{Environment, Value as Jinja};
use serde_json::Value;

/// Template steps allowed per render: loops in a template cannot stall the gateway.
const FUEL: u64 = 50_000;

/// The compiled templates of every route.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    count: usize,
}

/// A handle to one compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpl(String);

impl Default for Templates {
    fn default() -> Self {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(50);
        Self { env, count: 0 }
    }
}

impl Templates {
    /// Compiles `source`; the error says where and why.
    pub fn add(&mut self, source: &str) -> Result<Tmpl, String> {
        self.add_named("template", source)
    }

    /// Compiles `source` under a name that errors will show (`route "hall button" data.brightness`).
    pub fn add_named(&mut self, name: &str, source: &str) -> Result<Tmpl, String> {
        self.count += 1;
        let name =
            if self.env.get_template(name).is_ok() { format!("{name} #{}", self.count) } else { name.to_owned() };
        self.env.add_template_owned(name.clone(), source.to_owned()).map_err(describe)?;
        Ok(Tmpl(name))
    }

    /// Compiles an expression (`value_json.action == 'single'`) as a template
    /// that renders `1` when it is true.
    pub fn add_condition(&mut self, expr: &str) -> Result<Tmpl, String> {
        self.add(&format!("{{% if {expr} %}}1{{% endif %}}"))
    }

    pub fn render(&self, t: &Tmpl, ctx: &Jinja) -> Result<String, String> {
        let template = self.env.get_template(&t.0).map_err(describe)?;
        template.render(ctx).map_err(describe)
    }

    pub fn is_true(&self, t: &Tmpl, ctx: &Jinja) -> Result<bool, String> {
        Ok(self.render(t, ctx)?.trim() == "1")
    }

    /// Renders and reads the text as a JSON literal when it is one.
    pub fn render_value(&self, t: &Tmpl, ctx: &Jinja) -> Result<Value, String> {
        Ok(native(self.render(t, ctx)?))
    }
}

/// `127.5` → number, `true`/`True` → bool, `[..]`/`{..}` → JSON, anything else → string.
pub fn native(text: String) -> Value {
    let trimmed = text.trim();
    // Jinja prints booleans the Python way.
    match trimmed {
        "True" => return Value::Bool(true),
        "False" => return Value::Bool(false),
        _ => {}
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_))) => v,
        _ => Value::String(text),
    }
}

fn describe(e: minijinja::Error) -> String {
    crate::describe_error(&e)
}

/// Whether a string is a template rather than a literal.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// The `topic` variable: renders as the whole topic, indexes as its levels
/// (`{{ topic }}` → `shellies/sw1/input/0`, `{{ topic[1] }}` → `sw1`).
#[derive(Debug)]
pub struct TopicVar {
    full: String,
    levels: Vec<String>,
}

impl TopicVar {
    pub fn value(topic: &str) -> Jinja {
        Jinja::from_object(Self { full: topic.to_owned(), levels: topic.split('/').map(str::to_owned).collect() })
    }
}

impl Object for TopicVar {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Jinja) -> Option<Jinja> {
        let i = key.as_i64()?;
        let i = if i < 0 { self.levels.len() as i64 + i } else { i };
        self.levels.get(usize::try_from(i).ok()?).map(|s| Jinja::from(s.as_str()))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(value: &str) -> Jinja {
        let json: Option<Value> = serde_json::from_str(value).ok();
        minijinja::context! {
            value => value,
            value_json => json.map(|j| Jinja::from_serialize(&j)),
            topic => TopicVar::value("zigbee2mqtt/hall_button"),
            device => "hall_button",
        }
    }

    #[test]
    fn templates_render_like_home_assistants() {
        let table = [
            ("{{ value_json.action }}", r#"{"action":"single"}"#, Value::from("single")),
            ("{{ value | float * 2.55 }}", "50", Value::from(127.5)),
            ("{{ (value | float * 2.55) | int }}", "50", Value::from(127)),
            ("{{ topic[1] }}", "x", Value::from("hall_button")),
            ("{{ topic[-1] }}", "x", Value::from("hall_button")),
            ("{{ topic }}", "x", Value::from("zigbee2mqtt/hall_button")),
            ("light.{{ device }}", "x", Value::from("light.hall_button")),
            ("{{ value_json.state == 'ON' }}", r#"{"state":"ON"}"#, Value::from(true)),
            ("plain", "x", Value::from("plain")),
        ];
        let mut t = Templates::default();
        for (source, payload, expected) in table {
            let tmpl = t.add(source).unwrap();
            assert_eq!(t.render_value(&tmpl, &ctx(payload)).unwrap(), expected, "{source} with {payload}");
        }
    }

    #[test]
    fn conditions_and_errors() {
        let mut t = Templates::default();
        let single = t.add_condition("value_json.action == 'single'").unwrap();
        assert!(t.is_true(&single, &ctx(r#"{"action":"single"}"#)).unwrap());
        assert!(!t.is_true(&single, &ctx(r#"{"action":"double"}"#)).unwrap());
        assert!(!t.is_true(&single, &ctx("not json")).unwrap(), "missing value_json is just false");
        assert!(
            t.add("{{ value | nosuchfilter }}").is_err() || {
                let x = t.add("{{ value | nosuchfilter }}").unwrap();
                t.render(&x, &ctx("1")).is_err()
            }
        );
        assert!(t.add("{{ unclosed").is_err());
        let loop_forever =
            t.add("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}").unwrap();
        assert!(t.render(&loop_forever, &ctx("1")).is_err(), "fuel bounds the work");
    }
}
