//! stackbed-render: a run's report as people and CI systems read it, rendered from the
//! same [`stackbed_services::report::Report`] that is serialised to report.json, so the
//! page can never disagree with the JSON.
//!
//! - [`html`]: `report.html`, one self-contained page (inline CSS and plotters SVG; no
//!   script, font, image or any other request leaves the file);
//! - [`junit`]: JUnit XML, one test case per check (run finished, each invariant, each SLA
//!   criterion) per seed, failures carrying the replay command.
//!
//! Nothing here reads a clock: the same report renders to the same bytes.

pub mod html;
pub mod junit;
pub mod xml;
