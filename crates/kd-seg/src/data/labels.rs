//! The Cityscapes label definition: label ids as stored in `*_gtFine_labelIds.png`, the 19
//! training ids used for training and evaluation, names and the official colours.
//!
//! Every label id that is not one of the 19 evaluated classes maps to the ignore value 255.
//! The license plate (label id -1 in the official table) cannot occur in an 8-bit label map;
//! it is listed for completeness and also maps to 255.

/// The training id that marks pixels to ignore in losses and metrics.
pub const IGNORE: u8 = 255;

/// Number of evaluated classes (training ids `0..19`).
pub const NUM_CLASSES: usize = 19;

/// One row of the Cityscapes label table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsLabel {
    /// Name as in the official table.
    pub name: &'static str,
    /// Label id as stored in `*_gtFine_labelIds.png` (-1 for the license plate).
    pub id: i32,
    /// Training id `0..19`, or [`IGNORE`].
    pub train_id: u8,
    /// Colour in `*_gtFine_color.png` (RGB).
    pub color: [u8; 3],
}

impl CsLabel {
    /// True when the label is not one of the 19 evaluated classes.
    pub fn ignore_in_eval(&self) -> bool {
        self.train_id == IGNORE
    }
}

const fn l(name: &'static str, id: i32, train_id: u8, color: [u8; 3]) -> CsLabel {
    CsLabel {
        name,
        id,
        train_id,
        color,
    }
}

/// The official label table, in label-id order (license plate last).
pub const CITYSCAPES_LABELS: [CsLabel; 35] = [
    l("unlabeled", 0, IGNORE, [0, 0, 0]),
    l("ego vehicle", 1, IGNORE, [0, 0, 0]),
    l("rectification border", 2, IGNORE, [0, 0, 0]),
    l("out of roi", 3, IGNORE, [0, 0, 0]),
    l("static", 4, IGNORE, [0, 0, 0]),
    l("dynamic", 5, IGNORE, [111, 74, 0]),
    l("ground", 6, IGNORE, [81, 0, 81]),
    l("road", 7, 0, [128, 64, 128]),
    l("sidewalk", 8, 1, [244, 35, 232]),
    l("parking", 9, IGNORE, [250, 170, 160]),
    l("rail track", 10, IGNORE, [230, 150, 140]),
    l("building", 11, 2, [70, 70, 70]),
    l("wall", 12, 3, [102, 102, 156]),
    l("fence", 13, 4, [190, 153, 153]),
    l("guard rail", 14, IGNORE, [180, 165, 180]),
    l("bridge", 15, IGNORE, [150, 100, 100]),
    l("tunnel", 16, IGNORE, [150, 120, 90]),
    l("pole", 17, 5, [153, 153, 153]),
    l("polegroup", 18, IGNORE, [153, 153, 153]),
    l("traffic light", 19, 6, [250, 170, 30]),
    l("traffic sign", 20, 7, [220, 220, 0]),
    l("vegetation", 21, 8, [107, 142, 35]),
    l("terrain", 22, 9, [152, 251, 152]),
    l("sky", 23, 10, [70, 130, 180]),
    l("person", 24, 11, [220, 20, 60]),
    l("rider", 25, 12, [255, 0, 0]),
    l("car", 26, 13, [0, 0, 142]),
    l("truck", 27, 14, [0, 0, 70]),
    l("bus", 28, 15, [0, 60, 100]),
    l("caravan", 29, IGNORE, [0, 0, 90]),
    l("trailer", 30, IGNORE, [0, 0, 110]),
    l("train", 31, 16, [0, 80, 100]),
    l("motorcycle", 32, 17, [0, 0, 230]),
    l("bicycle", 33, 18, [119, 11, 32]),
    l("license plate", -1, IGNORE, [0, 0, 142]),
];

/// The largest label id (33).
pub const MAX_LABEL_ID: u8 = 33;

/// The 19 class names, by training id.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// The label id of each training id (the inverse of [`LABEL_TO_TRAIN`] on the 19 classes).
pub const TRAIN_TO_LABEL: [u8; NUM_CLASSES] = [
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
];

/// The official colour of each training id (RGB).
pub const PALETTE: [[u8; 3]; NUM_CLASSES] = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [102, 102, 156],
    [190, 153, 153],
    [153, 153, 153],
    [250, 170, 30],
    [220, 220, 0],
    [107, 142, 35],
    [152, 251, 152],
    [70, 130, 180],
    [220, 20, 60],
    [255, 0, 0],
    [0, 0, 142],
    [0, 0, 70],
    [0, 60, 100],
    [0, 80, 100],
    [0, 0, 230],
    [119, 11, 32],
];

const fn build_lut() -> [u8; 256] {
    let mut lut = [IGNORE; 256];
    let mut t = 0;
    while t < NUM_CLASSES {
        lut[TRAIN_TO_LABEL[t] as usize] = t as u8;
        t += 1;
    }
    lut
}

/// Label id → training id for every byte value (255 for ids that are not evaluated and for
/// values above 33).
pub const LABEL_TO_TRAIN: [u8; 256] = build_lut();

/// Training id of a label id.
pub fn train_id(label_id: u8) -> u8 {
    LABEL_TO_TRAIN[label_id as usize]
}

/// Label id of a training id; `None` for 255 or any value ≥ 19.
pub fn label_id(train_id: u8) -> Option<u8> {
    TRAIN_TO_LABEL.get(train_id as usize).copied()
}

/// Maps a label-id map to training ids in place.
pub fn label_ids_to_train_ids(map: &mut [u8]) {
    for v in map {
        *v = LABEL_TO_TRAIN[*v as usize];
    }
}

/// The official label-table row of a label id (`None` above 33).
pub fn label_by_id(label_id: u8) -> Option<&'static CsLabel> {
    CITYSCAPES_LABELS
        .get(label_id as usize)
        .filter(|l| l.id == label_id as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_to_train_matches_the_official_table_for_every_id() {
        let expected: [(u8, u8); 34] = [
            (0, 255),
            (1, 255),
            (2, 255),
            (3, 255),
            (4, 255),
            (5, 255),
            (6, 255),
            (7, 0),
            (8, 1),
            (9, 255),
            (10, 255),
            (11, 2),
            (12, 3),
            (13, 4),
            (14, 255),
            (15, 255),
            (16, 255),
            (17, 5),
            (18, 255),
            (19, 6),
            (20, 7),
            (21, 8),
            (22, 9),
            (23, 10),
            (24, 11),
            (25, 12),
            (26, 13),
            (27, 14),
            (28, 15),
            (29, 255),
            (30, 255),
            (31, 16),
            (32, 17),
            (33, 18),
        ];
        for (id, t) in expected {
            assert_eq!(train_id(id), t, "label id {id}");
            assert_eq!(CITYSCAPES_LABELS[id as usize].id, id as i32);
            assert_eq!(CITYSCAPES_LABELS[id as usize].train_id, t);
        }
        for id in 34..=255u8 {
            assert_eq!(train_id(id), IGNORE);
            assert!(label_by_id(id).is_none());
        }
        assert_eq!(CITYSCAPES_LABELS[34].id, -1);
        assert!(CITYSCAPES_LABELS[34].ignore_in_eval());
    }

    #[test]
    fn inverse_names_and_colours_agree_with_the_table() {
        for t in 0..NUM_CLASSES as u8 {
            let id = label_id(t).unwrap();
            assert_eq!(train_id(id), t);
            let row = label_by_id(id).unwrap();
            assert_eq!(row.name, CLASS_NAMES[t as usize]);
            assert_eq!(row.color, PALETTE[t as usize]);
        }
        assert_eq!(label_id(IGNORE), None);
        assert_eq!(label_id(19), None);
        let evaluated = CITYSCAPES_LABELS.iter().filter(|l| !l.ignore_in_eval()).count();
        assert_eq!(evaluated, NUM_CLASSES);
        let mut m = [7u8, 0, 26, 200];
        label_ids_to_train_ids(&mut m);
        assert_eq!(m, [0, 255, 13, 255]);
    }
}
