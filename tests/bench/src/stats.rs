//! Figures: the samples of one measurement, their median and spread, formatted in a unit.

/// How a figure's values are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Ms,
    Secs,
    MiB,
    Percent,
    Bytes,
    Count,
}

impl Unit {
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Ms if v < 10.0 => format!("{v:.2} ms"),
            Unit::Ms => format!("{v:.1} ms"),
            Unit::Secs => format!("{v:.2} s"),
            Unit::MiB => format!("{v:.2} MiB"),
            Unit::Percent => format!("{v:.3} %"),
            Unit::Bytes if v >= 1024.0 * 1024.0 => format!("{:.2} MiB", v / 1024.0 / 1024.0),
            Unit::Bytes => format!("{:.1} KiB", v / 1024.0),
            Unit::Count => format!("{v:.0}"),
        }
    }
}

/// The samples of one measurement (one per run).
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub samples: Vec<f64>,
    pub unit: Unit,
}

impl Figure {
    pub fn new(unit: Unit, samples: Vec<f64>) -> Figure {
        Figure { samples, unit }
    }

    pub fn one(unit: Unit, v: f64) -> Figure {
        Figure::new(unit, vec![v])
    }

    pub fn n(&self) -> usize {
        self.samples.len()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    /// The median (mean of the two middle samples for an even count); NaN when empty.
    pub fn median(&self) -> f64 {
        let s = self.sorted();
        match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    pub fn show_median(&self) -> String {
        self.unit.show(self.median())
    }

    /// `min - max`, or `-` for a single sample.
    pub fn show_spread(&self) -> String {
        if self.n() < 2 {
            "-".into()
        } else {
            format!(
                "{} - {}",
                self.unit.show(self.min()),
                self.unit.show(self.max())
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_spread() {
        let f = Figure::new(Unit::Ms, vec![5.0, 1.0, 3.0]);
        assert_eq!(f.median(), 3.0);
        assert_eq!((f.min(), f.max()), (1.0, 5.0));
        let g = Figure::new(Unit::Ms, vec![4.0, 1.0, 3.0, 2.0]);
        assert_eq!(g.median(), 2.5);
        assert_eq!(g.show_spread(), "1.00 ms - 4.00 ms");
        assert_eq!(Figure::one(Unit::Count, 0.0).show_spread(), "-");
        assert!(Figure::new(Unit::Ms, vec![]).median().is_nan());
    }

    #[test]
    fn units_format() {
        assert_eq!(Unit::Ms.show(1003.24), "1003.2 ms");
        assert_eq!(Unit::Ms.show(2.345), "2.35 ms");
        assert_eq!(Unit::Bytes.show(1536.0), "1.5 KiB");
        assert_eq!(Unit::Bytes.show(3.0 * 1024.0 * 1024.0), "3.00 MiB");
        assert_eq!(Unit::Percent.show(0.1234), "0.123 %");
        assert_eq!(Unit::Secs.show(6.5), "6.50 s");
    }
}
