//! Route templates: Jinja syntax, as in Home Assistant (`{{ value_json.action }}`,
//! `{{ value | float * 2.55 }}`, `{{ topic[1] }}`), compiled once at config
//! load by minijinja and rendered per message with a bounded amount of work.
//!
//! Rendered text is read back as a JSON literal when it is one (`127.5`,
//! `true`, `[1,2]`), like HA's native types, so numbers reach HA as numbers.
//!
//! A condition (`when`) is written either as HA writes template conditions,
//! `{{ value_json.action == 'single' }}` (true when it renders `true`, `on`,
//! `yes`, `enable` or a non-zero number, as HA judges them), or as a bare
//! expression, `value_json.action == 'single'`. Compile errors give the
//! line and column and, for mistakes HA users make, the fix in HA's words.

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
        self.insert(name, source.to_owned()).map_err(describe)
    }

    /// Compiles `source` under `name`, made unique (`name #3`) if taken.
    fn insert(&mut self, name: &str, source: String) -> Result<Tmpl, minijinja::Error> {
        self.count += 1;
        let name =
            if self.env.get_template(name).is_ok() { format!("{name} #{}", self.count) } else { name.to_owned() };
        self.env.add_template_owned(name.clone(), source)?;
        Ok(Tmpl(name))
    }

    /// Compiles a condition: HA's template form (`{{ … }}`, `{% … %}`) as
    /// it is, a bare expression (`value_json.action == 'single'`) as a
    /// template that renders `1` when it is true. See [`is_true`](Self::is_true).
    pub fn add_condition(&mut self, expr: &str) -> Result<Tmpl, String> {
        self.add_condition_named("condition", expr)
    }

    /// [`add_condition`](Self::add_condition) under a name that errors show.
    pub fn add_condition_named(&mut self, name: &str, when: &str) -> Result<Tmpl, String> {
        const IF: &str = "{% if ";
        let (source, shift) =
            if is_template(when) { (when.to_owned(), 0) } else { (format!("{IF}{when} %}}1{{% endif %}}"), IF.len()) };
        let tmpl = self.insert(name, source).map_err(|e| condition_error(&e, when, shift))?;
        let used = self.env.get_template(&tmpl.0).map(|t| t.undeclared_variables(false)).unwrap_or_default();
        if let Some(hint) = home_assistant_only_names(&used) {
            self.env.remove_template(&tmpl.0);
            return Err(hint);
        }
        Ok(tmpl)
    }

    pub fn render(&self, t: &Tmpl, ctx: &Jinja) -> Result<String, String> {
        let template = self.env.get_template(&t.0).map_err(describe)?;
        template.render(ctx).map_err(describe)
    }

    /// Renders a condition and judges the text as HA judges a template
    /// condition's result.
    pub fn is_true(&self, t: &Tmpl, ctx: &Jinja) -> Result<bool, String> {
        Ok(truthy(&self.render(t, ctx)?))
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

/// HA's `result_as_boolean`: `true`/`on`/`yes`/`enable` (any case) or a
/// non-zero number; anything else (`maybe`, ``) is false.
pub fn truthy(text: &str) -> bool {
    let text = text.trim();
    if let Ok(n) = text.parse::<f64>() {
        return n != 0.0;
    }
    ["true", "on", "yes", "enable"].iter().any(|t| text.eq_ignore_ascii_case(t))
}

/// A condition's compile error: what, where (line and column in what the
/// user wrote; `shift` is what was put before it), and the usual fix.
fn condition_error(e: &minijinja::Error, written: &str, shift: usize) -> String {
    let what = e.detail().map(str::to_owned).unwrap_or_else(|| e.kind().to_string());
    let mut at = e.range().map(|r| r.start.saturating_sub(shift)).unwrap_or(0).min(written.len());
    while !written.is_char_boundary(at) {
        at -= 1;
    }
    let rest = &written[at..];
    let before = &written[..at + rest.len() - rest.trim_start().len()];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(
        "syntax error: {what} at line {line}, column {column}; write a condition as one template, \
         as in Home Assistant ({{{{ value_json.action == 'single' }}}}, the {{{{ … }}}} form), or as a bare expression \
         (value_json.action == 'single'), not a mix of the two"
    )
}

/// Names Home Assistant's templates have and routes do not, with their
/// counterpart here: `trigger.payload_json` is `value_json`, and so on.
fn home_assistant_only_names(used: &std::collections::HashSet<String>) -> Option<String> {
    const HA_ONLY: [(&str, &str); 6] = [
        ("trigger", "trigger.payload_json is value_json here, trigger.payload is value, trigger.topic is topic"),
        ("states", "a route sees the MQTT message only (value, value_json, topic); HA's states are not read"),
        ("is_state", "a route sees the MQTT message only (value, value_json, topic); HA's states are not read"),
        ("state_attr", "a route sees the MQTT message only (value, value_json, topic); HA's states are not read"),
        ("this", "a route sees the MQTT message only (value, value_json, topic)"),
        ("now", "routes have no clock; use HA's own conditions in the script or automation the route calls"),
    ];
    let (name, fix) = HA_ONLY.iter().find(|(name, _)| used.contains(*name))?;
    Some(format!("{name} is a Home Assistant template name routes do not have: {fix}"))
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
            // As in HA (Python): 50 * 2.55 is 127.49999999999999 in binary floats.
            ("{{ value | float * 2.55 }}", "50", Value::from(127.49999999999999)),
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
