//! Static assets embedded in the binary, and the index page.

use bytes::Bytes;

pub const APP_CSS: &str = include_str!("../assets/app.css");
pub const APP_JS: &str = include_str!("../assets/app.js");
pub const LOGO_PNG: &[u8] = include_bytes!("../assets/logo.png");
const INDEX_TEMPLATE: &str = include_str!("../assets/index.html");

/// An embedded static asset: its content type and bytes.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Looks up the asset served at `path` (e.g. `/static/app.css`).
pub fn lookup(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/static/app.css" => ("text/css; charset=utf-8", APP_CSS.as_bytes()),
        "/static/app.js" => ("text/javascript; charset=utf-8", APP_JS.as_bytes()),
        "/static/logo.png" => ("image/png", LOGO_PNG),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// Renders the index page for `hostname` (HTML-escaped).
pub fn render_index(hostname: &str) -> Bytes {
    Bytes::from(INDEX_TEMPLATE.replace("{{HOSTNAME}}", &escape_html(hostname)))
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_escapes_hostname() {
        let page = render_index("<b>&");
        let page = String::from_utf8_lossy(&page);
        assert!(page.contains("&lt;b&gt;&amp;"));
        assert!(!page.contains("{{HOSTNAME}}"));
    }

    #[test]
    fn logo_is_png() {
        assert!(LOGO_PNG.starts_with(b"\x89PNG\r\n\x1a\n"));
    }
}
