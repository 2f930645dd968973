//! What both roles' status pages (`GET /` on the admin port) share: HTML escaping, the page
//! frame with its refresh script, and reading series out of the Prometheus text that the
//! metrics registry already renders (one source for the page and `/metrics`).

use std::fmt::Write;

/// Escapes text for HTML element content and quoted attributes: client ids, backend names and
/// error messages come from configs and from the network.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// One sample of the exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, suffix included (`_total`).
    pub name: String,
    /// Label pairs in their order.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// A label's value.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of an OpenMetrics/Prometheus text whose name starts with `prefix`.
pub fn samples(text: &str, prefix: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with(prefix) {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (head, Vec::new()),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, v)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = v.char_indices();
        let mut end = v.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((k.trim_start_matches(',').trim().to_string(), val));
        rest = &v[end..];
    }
    out
}

/// The whole page: `title`, the server-rendered `body`, and the script that refreshes it
/// from `api` every two seconds (`render` is the script's function that turns that JSON
/// into the body's HTML).
pub fn page(title: &str, body: &str, api: &str, script: &str) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t}</title><style>{css}</style></head>\n<body>\
         <header><h1>{t}</h1><span id=\"refreshed\">rendered by the server</span></header>\n\
         <main id=\"status\">{body}</main>\n\
         <script>\"use strict\";\nconst API = {api:?};\n{common}\n{script}\n</script>\
         </body></html>\n",
        t = esc(title),
        css = CSS,
        common = COMMON_JS,
    );
    o
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#222}\
header{background:#1d3557;color:#fff;padding:.6em 1em;display:flex;gap:1em;align-items:baseline}\
h1{font-size:1.2em;margin:0}#refreshed{opacity:.8;font-size:.9em}main{padding:1em}\
h2{font-size:1.05em;margin:1.2em 0 .4em}table{border-collapse:collapse;margin-bottom:1em}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f1f3f5}.up,.ok,.alive{color:#2b8a3e;font-weight:600}\
.down,.failed,.dead{color:#c92a2a;font-weight:600}.draining,.checking,.held{color:#e67700;font-weight:600}\
.hist span{display:inline-block;width:.6em;height:1em;margin-right:1px}\
.hist .ok{background:#2b8a3e}.hist .failed{background:#c92a2a}.err{color:#c92a2a}";

/// Escaping and the refresh loop; each role's script defines `render(json) -> html`.
const COMMON_JS: &str = r#"function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"})[c]);
}
async function refresh() {
  try {
    const r = await fetch(API, {headers: {"accept": "application/json"}});
    if (!r.ok) throw new Error(API + ": HTTP " + r.status);
    document.getElementById("status").innerHTML = render(await r.json());
    document.getElementById("refreshed").textContent = "refreshed " + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("refreshed").textContent = "refresh failed: " + e.message;
  }
}
setInterval(refresh, 2000);
refresh();"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_reads_samples() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let text =
            "# TYPE m counter\nm_total{listener=\"a\\\"b\",reason=\"x\"} 3\nm_up 1\nother 2\n";
        let s = samples(text, "m_");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label("listener"), Some("a\"b"));
        assert_eq!(s[0].label("reason"), Some("x"));
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].name, "m_up");
    }
}
