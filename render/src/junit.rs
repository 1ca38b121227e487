//! JUnit XML (`--junit FILE`): one `<testsuite>` per run (a seed, or a strategy's seed in a
//! compare), one `<testcase>` per check of that run ([`Check`]: the run finished, each
//! invariant, each SLA criterion). A failed check is a `<failure>` whose message is the
//! check's and whose text adds the command that replays the run. No wall time is written:
//! the same runs give the same file.

use stackbed_services::checks::Check;

use crate::xml::escape;

/// One run's checks.
#[derive(Debug, Clone)]
pub struct Suite {
    /// E.g. `quickstart seed 1` or `compare pack seed 3`.
    pub name: String,
    /// The test cases' classname prefix, e.g. `stackbed.quickstart.seed-1`; a case's
    /// classname adds its kind (`.invariant`, `.sla`, `.run`).
    pub classname: String,
    pub checks: Vec<Check>,
    /// The exact command that replays the run.
    pub replay: String,
}

/// A suite of the checks of one report.
pub fn suite(name: String, classname: String, report: &stackbed_services::report::Report) -> Suite {
    Suite { name, classname, checks: report.checks(), replay: report.replay.clone() }
}

/// A classname part: letters, digits, `-` and `_` kept, anything else `_` (CI systems split
/// classnames at dots).
pub fn class_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The document: `<testsuites name=title>` around every suite.
pub fn render(title: &str, suites: &[Suite]) -> String {
    let tests: usize = suites.iter().map(|s| s.checks.len()).sum();
    let failures: usize = suites.iter().map(|s| s.checks.iter().filter(|c| !c.passed).count()).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out += &format!("<testsuites name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\">\n", escape(title));
    for s in suites {
        let failed = s.checks.iter().filter(|c| !c.passed).count();
        out += &format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" errors=\"0\" skipped=\"0\">\n",
            escape(&s.name),
            s.checks.len()
        );
        out += &format!(
            "    <properties>\n      <property name=\"replay\" value=\"{}\"/>\n    </properties>\n",
            escape(&s.replay)
        );
        for c in &s.checks {
            let open = format!(
                "    <testcase classname=\"{}.{}\" name=\"{}\"",
                escape(&s.classname),
                escape(&class_part(&c.kind)),
                escape(&c.name)
            );
            if c.passed {
                out += &format!("{open}/>\n");
            } else {
                out += &format!(
                    "{open}>\n      <failure message=\"{}\" type=\"{}\">{}\nreplay: {}</failure>\n    </testcase>\n",
                    escape(&c.message),
                    escape(&c.kind),
                    escape(&c.message),
                    escape(&s.replay)
                );
            }
        }
        out += "  </testsuite>\n";
    }
    out += "</testsuites>\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, passed: bool, message: &str) -> Check {
        Check { kind: "invariant".into(), name: name.into(), passed, message: message.into() }
    }

    #[test]
    fn failures_carry_the_message_and_the_replay_escaped() {
        let s = Suite {
            name: "q seed 1".into(),
            classname: "stackbed.q.seed-1".into(),
            checks: vec![check("a", true, ""), check("b<c", false, "x & \"y\" <z>")],
            replay: "cargo sim run q.toml --seed 1 --set 'a=b'".into(),
        };
        let xml = render("stackbed run q", &[s]);
        assert!(xml.contains(r#"<testsuites name="stackbed run q" tests="2" failures="1" errors="0">"#), "{xml}");
        assert!(xml.contains(r#"<testcase classname="stackbed.q.seed-1.invariant" name="a"/>"#), "{xml}");
        assert!(xml.contains(r#"name="b&lt;c""#), "{xml}");
        assert!(xml.contains(r#"<failure message="x &amp; &quot;y&quot; &lt;z&gt;" type="invariant">"#), "{xml}");
        assert!(xml.contains("replay: cargo sim run q.toml --seed 1 --set &apos;a=b&apos;</failure>"), "{xml}");
        assert_eq!(class_part("first-fit.x y"), "first-fit_x_y");
    }
}
