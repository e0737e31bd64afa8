//! Reading a metrics scrape (the OpenMetrics text format) the way a scraper would: every line a
//! comment (`# HELP`, `# TYPE`, `# UNIT`) or a sample, the last one `# EOF`.

use std::collections::BTreeMap;

/// Every sample of a scrape, by its name and labels as written (`name{label="value"}`), or why
/// the text is not a well-formed scrape.
pub fn parse(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut samples = BTreeMap::new();
    let mut lines = text.lines().peekable();
    let mut ended = false;
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            if lines.peek().is_some() {
                return Err("lines after # EOF".into());
            }
            ended = true;
            break;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap_or("");
            if !["HELP", "TYPE", "UNIT"].contains(&kind) {
                return Err(format!("not a metadata line: {line:?}"));
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("a sample without a value: {line:?}"))?;
        let name = series.split('{').next().unwrap_or("");
        let well_named = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !well_named {
            return Err(format!("a bad metric name: {line:?}"));
        }
        if series.contains('{') && !series.ends_with('}') {
            return Err(format!("unclosed labels: {line:?}"));
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .map_err(|_| format!("a value that is not a number: {line:?}"))?,
        };
        if samples.insert(series.to_string(), value).is_some() {
            return Err(format!("a sample given twice: {line:?}"));
        }
    }
    if !ended {
        return Err("no # EOF at the end".into());
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_read_and_a_bad_one_refused() {
        let good =
            "# HELP x_total Things.\n# TYPE x counter\nx_total{kind=\"a\"} 3\ny 1.5\n# EOF\n";
        let samples = parse(good).unwrap();
        assert_eq!(samples["x_total{kind=\"a\"}"], 3.0);
        assert_eq!(samples["y"], 1.5);
        assert!(parse("y 1\n").is_err(), "no EOF");
        assert!(parse("y one\n# EOF\n").is_err(), "not a number");
        assert!(parse("9y 1\n# EOF\n").is_err(), "bad name");
        assert!(parse("y 1\ny 2\n# EOF\n").is_err(), "twice");
    }
}
