//! The tensor-parallel communicator on a GPU machine (issue 19): NCCL
//! loaded at run time, one rank per device. With one GPU lent, one rank:
//! the library loads, a communicator is made on device 0, an all-reduce
//! and an all-gather run on the runtime's own stream and give the one-rank
//! answers (the input back, bit for bit, in another buffer and in place),
//! and device memory is back where it started once the communicator is
//! gone. With several devices visible, every rank takes part and the sums
//! are checked too. Run by scripts/gpu_check.sh `collective`
//! (`FORGE_NCCL_LIB` may name the library's path).
#![cfg(any(feature = "cuda", feature = "rocm"))]

use rocmforge::backend::gpu::{self, collective::Comms, GpuKind};

fn kind() -> GpuKind {
    match std::env::var("FORGE_TEST_GPU").as_deref() {
        Ok("hip") => GpuKind::Hip,
        Ok("cuda") => GpuKind::Cuda,
        _ if cfg!(feature = "cuda") => GpuKind::Cuda,
        _ => GpuKind::Hip,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn every_visible_gpu_all_reduces_and_gathers() {
    let n_dev = kind()
        .device_count()
        .expect("this test runs on a GPU machine");
    let devs: Vec<_> = (0..n_dev)
        .map(|i| gpu::device(kind(), i).unwrap())
        .collect();
    let free0: Vec<usize> = devs.iter().map(|d| d.rt.mem_info().unwrap().0).collect();
    let count = 1 << 20;
    let free = || -> Vec<usize> { devs.iter().map(|d| d.rt.mem_info().unwrap().0).collect() };
    let mut after = Vec::new();
    for _round in 0..2 {
        let comms = Comms::init_all(kind(), &(0..n_dev).collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(comms.ranks(), n_dev);
        println!(
            "{} ranks over {}: {}",
            n_dev,
            devs[0].describe(),
            comms.describe()
        );
        // rank r holds r + 1 + i / count... distinct per rank and element
        let input = |r: usize| -> Vec<f32> {
            (0..count)
                .map(|i| (r + 1) as f32 + (i % 977) as f32 * 0.25)
                .collect()
        };
        let mut streams = Vec::new();
        let mut bufs = Vec::new();
        for (r, d) in devs.iter().enumerate() {
            let s = d.rt.stream_create().unwrap();
            let (a, b, g) = (
                d.rt.alloc(count * 4).unwrap(),
                d.rt.alloc(count * 4).unwrap(),
                d.rt.alloc(count * 4 * n_dev).unwrap(),
            );
            d.rt.htod(s, a, &f32_bytes(&input(r))).unwrap();
            d.rt.stream_sync(s).unwrap();
            streams.push(s);
            bufs.push((a, b, g));
        }
        // out of place, then in place
        comms
            .all_reduce_sum(
                &bufs.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
                count,
                &streams,
            )
            .unwrap();
        comms
            .all_gather(
                &bufs.iter().map(|b| (b.0, b.2)).collect::<Vec<_>>(),
                count,
                &streams,
            )
            .unwrap();
        comms
            .all_reduce_sum(
                &bufs.iter().map(|b| (b.0, b.0)).collect::<Vec<_>>(),
                count,
                &streams,
            )
            .unwrap();
        let inputs: Vec<Vec<f32>> = (0..n_dev).map(input).collect();
        let sum: Vec<f32> = (0..count)
            .map(|i| inputs.iter().map(|v| v[i]).sum())
            .collect();
        for (r, d) in devs.iter().enumerate() {
            d.rt.stream_sync(streams[r]).unwrap();
            let mut out = vec![0u8; count * 4];
            d.rt.dtoh(streams[r], &mut out, bufs[r].1).unwrap();
            d.rt.stream_sync(streams[r]).unwrap();
            assert_eq!(floats(&out), sum, "rank {r}: all-reduce");
            let mut inplace = vec![0u8; count * 4];
            d.rt.dtoh(streams[r], &mut inplace, bufs[r].0).unwrap();
            let mut gathered = vec![0u8; count * 4 * n_dev];
            d.rt.dtoh(streams[r], &mut gathered, bufs[r].2).unwrap();
            d.rt.stream_sync(streams[r]).unwrap();
            assert_eq!(floats(&inplace), sum, "rank {r}: in-place all-reduce");
            let g = floats(&gathered);
            for q in 0..n_dev {
                assert_eq!(
                    g[q * count..(q + 1) * count],
                    inputs[q][..],
                    "rank {r}: all-gather, rank {q}'s part"
                );
            }
        }
        // a mismatched call is an error, not a crash
        assert!(comms.all_reduce_sum(&[], count, &streams).is_err());
        for (r, d) in devs.iter().enumerate() {
            for p in [bufs[r].0, bufs[r].1, bufs[r].2] {
                d.rt.free(p);
            }
            d.rt.stream_destroy(streams[r]);
        }
        drop(comms);
        after.push(free());
    }
    // the first communicator costs the process a one-time setup (the CUDA
    // runtime and NCCL's own state, kept until exit); a second one, made
    // and destroyed the same way, must give back everything it took
    for (i, d) in devs.iter().enumerate() {
        let (f0, f1, f2) = (free0[i], after[0][i], after[1][i]);
        println!(
            "device {i}: {} MiB of one-time setup; the second communicator left {} MiB",
            f0.saturating_sub(f1) >> 20,
            f1.saturating_sub(f2) >> 20
        );
        assert!(
            f2 + (8 << 20) >= f1,
            "device {}: a communicator made and destroyed again kept {} MiB",
            d.rt.info().index,
            (f1 - f2) >> 20
        );
    }
}
