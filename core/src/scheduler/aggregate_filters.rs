//! The filters that read a host's aggregate metadata as a dict of sets: today nova's
//! `aggregate_metadata_get_by_host` splits every value on commas and trims the pieces
//! ([`HostAggregates::metadata`]); in 2014.1 its database call kept each value whole
//! ([`HostAggregates::values`]), and AggregateMultiTenancyIsolation read only the key
//! `filter_tenant_id` (today every key starting with it).

use super::image_props::{canonical_arch, canonical_hv_type, canonical_vm_mode, image_property, IMAGE_META_FIELDS};
use super::{reject, HostAggregates, Why};
use crate::extra_specs;
use crate::model::{Flavor, Image};
use crate::scenario::Era;

use std::collections::{BTreeMap, BTreeSet};

/// nova's scope for AggregateInstanceExtraSpecsFilter.
const AGGREGATE_SCOPE: &str = "aggregate_instance_extra_specs";

/// The metadata as the era's filters see it.
fn metadata(aggs: &HostAggregates, era: Era) -> &BTreeMap<String, BTreeSet<String>> {
    match era {
        Era::Current => &aggs.metadata,
        Era::Icehouse => &aggs.values,
    }
}

/// AggregateInstanceExtraSpecsFilter: every unscoped or `aggregate_instance_extra_specs:`
/// extra_spec must be set by one of the host's aggregates to a matching value.
pub(super) fn instance_extra_specs(aggs: &HostAggregates, flavor: &Flavor, era: Era, why: &mut impl Why) -> bool {
    let md = metadata(aggs, era);
    for (key, req) in &flavor.extra_specs {
        let key = match key.split_once(':') {
            Some((AGGREGATE_SCOPE, rest)) => rest,
            Some(_) => continue,
            None => key.as_str(),
        };
        let Some(values) = md.get(key).filter(|v| !v.is_empty()) else {
            return reject(why, || format!("no aggregate of the host sets `{key}`"));
        };
        if !values.iter().any(|v| extra_specs::matches(v, req).unwrap_or(false)) {
            return reject(why, || format!("aggregate values {values:?} of `{key}` do not match `{req}`"));
        }
    }
    true
}

/// The image's value for an aggregate key as today's filter reads it: only keys that are
/// ImageMetaProps fields (under their current name, the legacy one as fallback), the enum
/// fields canonical.
fn current_image_value<'a>(image: &'a Image, key: &str) -> Option<&'a str> {
    if !IMAGE_META_FIELDS.contains(&key) {
        return None; // nova: AttributeError, the key is skipped
    }
    let v = image_property(&image.properties, key)?;
    Some(match key {
        "hw_architecture" => canonical_arch(v).unwrap_or(v),
        "img_hv_type" => canonical_hv_type(v).unwrap_or(v),
        "hw_vm_mode" => canonical_vm_mode(v, Era::Current).unwrap_or(v),
        _ => v,
    })
}

/// AggregateImagePropertiesIsolation: an image property the host's aggregates also set must
/// be among their values.
pub(super) fn image_properties_isolation(aggs: &HostAggregates, image: &Image, era: Era, why: &mut impl Why) -> bool {
    for (key, options) in metadata(aggs, era) {
        let prop = match era {
            Era::Current => current_image_value(image, key),
            Era::Icehouse => image.properties.get(key).map(String::as_str),
        };
        if let Some(prop) = prop {
            if !prop.is_empty() && !options.contains(prop) {
                return reject(why, || format!("image {key}={prop} not in aggregate values {options:?}"));
            }
        }
    }
    true
}

/// AggregateMultiTenancyIsolation: a host in an aggregate restricted to tenants takes only
/// theirs.
pub(super) fn multi_tenancy_isolation(aggs: &HostAggregates, project: &str, era: Era, why: &mut impl Why) -> bool {
    let mut restricted = false;
    let keys = metadata(aggs, era)
        .range::<str, _>((std::ops::Bound::Included("filter_tenant_id"), std::ops::Bound::Unbounded));
    for (key, tenants) in keys {
        let ours = match era {
            Era::Current => key.starts_with("filter_tenant_id"),
            Era::Icehouse => key == "filter_tenant_id",
        };
        if !ours {
            break;
        }
        restricted = true;
        if tenants.contains(project) {
            return true;
        }
    }
    !restricted || reject(why, || format!("aggregate restricted to other tenants than `{project}`"))
}

/// AggregateTypeAffinityFilter: aggregates with `instance_type` take only those flavors
/// (comma-separated names today, one whole name in 2014.1).
pub(super) fn type_affinity(aggs: &HostAggregates, flavor: &str, era: Era, why: &mut impl Why) -> bool {
    match aggs.values.get("instance_type") {
        None => true,
        Some(vals) => {
            let ok = match era {
                Era::Current => vals.iter().any(|v| v.split(',').any(|x| x.trim() == flavor)),
                Era::Icehouse => vals.contains(flavor),
            };
            ok || reject(why, || format!("aggregate instance_type {vals:?} excludes `{flavor}`"))
        }
    }
}
