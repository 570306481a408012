//! Learning-rate schedules with warmup, as transformers' `get_scheduler` defines them: the
//! update number `step` (0-based) uses `base * factor(step)`.

use crate::recipe::Schedule;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearningRate {
    pub base: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LearningRate {
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / decay_steps).min(1.0);
        match self.schedule {
            Schedule::Constant => self.base,
            Schedule::Linear => self.base * (1.0 - progress).max(0.0),
            Schedule::Cosine => self.base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_the_transformers_formulas() {
        let lr = |schedule| LearningRate {
            base: 1.0,
            schedule,
            warmup_steps: 2,
            total_steps: 10,
        };
        let linear: Vec<f64> = (0..11).map(|s| lr(Schedule::Linear).at(s)).collect();
        assert_eq!(&linear[..4], &[0.0, 0.5, 1.0, 0.875]);
        assert_eq!(linear[10], 0.0);
        let cosine = lr(Schedule::Cosine);
        assert!(
            (cosine.at(6) - 0.5).abs() < 1e-12,
            "half way through the decay"
        );
        assert_eq!(cosine.at(2), 1.0);
        assert_eq!(lr(Schedule::Constant).at(9), 1.0);
    }
}
