//! Placement's maths: capacity, whether a request fits a provider, allocation candidates.
//! The storage side (generation compare-and-swap, conflict retries) lives in the services.

use crate::model::{Provider, ResourceClass, Resources};

/// nova/placement's `allocation_candidates` limit.
pub const CANDIDATE_LIMIT: usize = 1000;

/// Placement's `allocation_conflict_retry_count`.
pub const CONFLICT_RETRIES_MAX: u32 = 10;

/// Why a request cannot be allocated against a provider: the first resource class that
/// refuses it, with the figures. Formatted only when shown, so a scan over many providers that
/// do not fit costs no strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// Outside the inventory's [min_unit, max_unit].
    Units { class: ResourceClass, amount: u64, min: u64, max: u64 },
    /// Not a multiple of the inventory's step_size.
    Step { class: ResourceClass, amount: u64, step: u64 },
    /// More than the capacity left.
    Capacity { class: ResourceClass, used: u64, amount: u64, capacity: u64 },
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Unfit::Units { class, amount, min, max } => write!(f, "{}: {amount} outside [{min}, {max}]", class.name()),
            Unfit::Step { class, amount, step } => write!(f, "{}: {amount} not a multiple of {step}", class.name()),
            Unfit::Capacity { class, used, amount, capacity } => {
                write!(f, "{}: {used} used + {amount} requested > capacity {capacity}", class.name())
            }
        }
    }
}

/// Why `resources` cannot be allocated against `provider`, or Ok.
pub fn fits(provider: &Provider, resources: &Resources) -> Result<(), Unfit> {
    for class in ResourceClass::ALL {
        let amount = resources.get(class);
        if amount == 0 {
            continue;
        }
        let inv = &provider.inventories[class.index()];
        if amount < inv.min_unit || amount > inv.max_unit {
            return Err(Unfit::Units { class, amount, min: inv.min_unit, max: inv.max_unit });
        }
        if inv.step_size > 1 && !amount.is_multiple_of(inv.step_size) {
            return Err(Unfit::Step { class, amount, step: inv.step_size });
        }
        let used = provider.used.get(class);
        if used + amount > inv.capacity() {
            return Err(Unfit::Capacity { class, used, amount, capacity: inv.capacity() });
        }
    }
    Ok(())
}

/// Indices of the providers that can take `resources`, in input order, at most `limit`.
/// Providers may be owned or borrowed (the scheduler reads them from a shared snapshot).
pub fn allocation_candidates<P: std::borrow::Borrow<Provider>>(
    providers: &[P],
    resources: &Resources,
    limit: usize,
) -> Vec<usize> {
    providers
        .iter()
        .enumerate()
        .filter(|(_, p)| fits((*p).borrow(), resources).is_ok())
        .map(|(i, _)| i)
        .take(limit)
        .collect()
}

/// Whether any class of `provider` is over its capacity (the no-overcommit invariant).
pub fn over_capacity(provider: &Provider, used: &Resources) -> Option<String> {
    ResourceClass::ALL.into_iter().find_map(|class| {
        let cap = provider.inventories[class.index()].capacity();
        let u = used.get(class);
        (u > cap).then(|| format!("{} {u} > capacity {cap}", class.name()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Inventory;

    fn provider(vcpus: u64, ratio: f64, reserved_ram: u64) -> Provider {
        Provider {
            host: "h".into(),
            inventories: [
                Inventory::new(vcpus, 0, ratio),
                Inventory::new(4096, reserved_ram, 1.0),
                Inventory::new(100, 0, 1.0),
            ],
            used: Resources::default(),
        }
    }

    #[test]
    fn capacity_is_total_minus_reserved_times_ratio() {
        let p = provider(4, 4.0, 512);
        assert_eq!(p.inventories[0].capacity(), 16);
        assert_eq!(p.inventories[1].capacity(), 3584);
        assert!(fits(&p, &Resources::new(4, 3584, 10)).is_ok());
        assert!(fits(&p, &Resources::new(4, 3585, 10)).is_err());
        let mut full = p.clone();
        full.used = Resources::new(15, 0, 0);
        assert!(fits(&full, &Resources::new(1, 1, 1)).is_ok());
        assert!(fits(&full, &Resources::new(2, 1, 1)).unwrap_err().to_string().contains("VCPU"));
    }

    #[test]
    fn max_unit_and_step_size_are_enforced() {
        let mut p = provider(8, 1.0, 0);
        p.inventories[0].max_unit = 4;
        p.inventories[1].step_size = 256;
        assert!(fits(&p, &Resources::new(5, 256, 1)).is_err());
        assert!(fits(&p, &Resources::new(4, 300, 1)).is_err());
        assert!(fits(&p, &Resources::new(4, 512, 1)).is_ok());
    }

    #[test]
    fn candidates_keep_order_and_limit() {
        let mut small = provider(1, 1.0, 0);
        small.host = "small".into();
        let ps = vec![provider(8, 1.0, 0), small, provider(8, 1.0, 0)];
        assert_eq!(allocation_candidates(&ps, &Resources::new(2, 1, 1), 10), vec![0, 2]);
        assert_eq!(allocation_candidates(&ps, &Resources::new(1, 1, 1), 2), vec![0, 1]);
    }
}
