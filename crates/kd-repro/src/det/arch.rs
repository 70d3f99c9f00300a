//! The detector families a detection table can distil: FCOS (one stage, the `coco` table) and
//! Faster R-CNN (two stages, the `coco-frcnn` table). A family fixes the network schema, the
//! task loss and how a network is built; the data, the evaluator (COCO box AP), the teacher
//! cache, the picture and the rows are shared, so a new family is one more impl here.

use std::fmt::Debug;

use kd_core::distill::{Distiller, TaskLoss};
use kd_core::models::Model;
use kd_det::losses::FcosLoss;
use kd_det::models::{self as detmodels, DetectorConfig};
use kd_det::two_stage::{self, FasterRcnnConfig, FrcnnLoss, FrcnnSupervised};
use kd_det::DetSupervised;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::nn;

use crate::table::NetClasses;

/// A detector family.
pub trait DetArch: 'static {
    /// The network schema of `[teacher] net` and `[[students]] net`.
    type Net: Clone + Debug + PartialEq + Serialize + DeserializeOwned + NetClasses;
    /// The `[loss]` section: the task loss of the teacher and of every student.
    type Loss: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Default;

    /// Builds `net` under `p`.
    fn build(net: &Self::Net, p: &nn::Path<'_>) -> kd_core::Result<Box<dyn Model>>;
    /// The supervised ("no KD") distiller for `loss`.
    fn supervised(loss: &Self::Loss) -> kd_core::Result<Box<dyn Distiller>>;
    /// The task loss feature methods add their terms to.
    fn task_loss(loss: &Self::Loss) -> kd_core::Result<Box<dyn TaskLoss>>;
}

/// FCOS with a ResNet-FPN.
pub struct Fcos;

impl DetArch for Fcos {
    type Net = DetectorConfig;
    type Loss = FcosLoss;

    fn build(net: &DetectorConfig, p: &nn::Path<'_>) -> kd_core::Result<Box<dyn Model>> {
        Ok(Box::new(detmodels::build(p, net)?))
    }
    fn supervised(loss: &FcosLoss) -> kd_core::Result<Box<dyn Distiller>> {
        Ok(Box::new(DetSupervised::new(loss.clone())?))
    }
    fn task_loss(loss: &FcosLoss) -> kd_core::Result<Box<dyn TaskLoss>> {
        Ok(Box::new(DetSupervised::new(loss.clone())?))
    }
}

/// Faster R-CNN with a ResNet-FPN.
pub struct FasterRcnn;

impl DetArch for FasterRcnn {
    type Net = FasterRcnnConfig;
    type Loss = FrcnnLoss;

    fn build(net: &FasterRcnnConfig, p: &nn::Path<'_>) -> kd_core::Result<Box<dyn Model>> {
        Ok(Box::new(two_stage::build(p, net)?))
    }
    fn supervised(loss: &FrcnnLoss) -> kd_core::Result<Box<dyn Distiller>> {
        Ok(Box::new(FrcnnSupervised::new(loss.clone())?))
    }
    fn task_loss(loss: &FrcnnLoss) -> kd_core::Result<Box<dyn TaskLoss>> {
        Ok(Box::new(FrcnnSupervised::new(loss.clone())?))
    }
}

impl NetClasses for DetectorConfig {
    fn num_classes(&self) -> i64 {
        self.num_classes
    }
}

impl NetClasses for FasterRcnnConfig {
    fn num_classes(&self) -> i64 {
        self.num_classes
    }
}
