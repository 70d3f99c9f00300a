//! Rough throughput probe of the zoo models (forward+backward), used to size quick recipes.
use kd_core::models::{build, ModelSpec};
use tch::{nn, Device, Kind, Tensor};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arch = &args[1];
    let hw: i64 = args[2].parse().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let m = build(
        arch,
        &vs.root(),
        ModelSpec {
            in_channels: 1,
            num_classes: 10,
        },
    )
    .unwrap();
    let x = Tensor::randn([64, 1, hw, hw], (Kind::Float, Device::Cpu));
    for mode in ["fwd-eval", "fwd-bwd"] {
        let t0 = std::time::Instant::now();
        for _ in 0..5 {
            if mode == "fwd-eval" {
                let _ = tch::no_grad(|| m.forward_t(&x, false));
            } else {
                let o = m.forward_t(&x, true);
                o.logits.sum(Kind::Float).backward();
            }
        }
        let dt = t0.elapsed().as_secs_f64() / 5.0;
        println!(
            "{arch} {hw}x{hw} {mode}: {:.3}s/batch64 = {:.0} img/s",
            dt,
            64.0 / dt
        );
    }
}
