//! Rectangles of pixels or latent samples, the unit every stage speaks in.

/// A rectangle of pixels (or latent samples), `x, y` its top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

impl Rect {
    /// A rectangle from its corner and size.
    pub const fn new(x: usize, y: usize, width: usize, height: usize) -> Rect {
        Rect { x, y, width, height }
    }

    /// One past the right column.
    pub const fn right(&self) -> usize {
        self.x + self.width
    }

    /// One past the bottom row.
    pub const fn bottom(&self) -> usize {
        self.y + self.height
    }

    /// Whether the rectangle holds no pixel.
    pub const fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// The overlap of two rectangles (empty when they do not meet).
    pub fn intersect(&self, other: &Rect) -> Rect {
        let (x, y) = (self.x.max(other.x), self.y.max(other.y));
        let (r, b) = (self.right().min(other.right()), self.bottom().min(other.bottom()));
        Rect { x, y, width: r.saturating_sub(x), height: b.saturating_sub(y) }
    }

    /// The smallest rectangle holding both (an empty one is ignored).
    pub fn union(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let (x, y) = (self.x.min(other.x), self.y.min(other.y));
        Rect { x, y, width: self.right().max(other.right()) - x, height: self.bottom().max(other.bottom()) - y }
    }

    /// Whether `other` lies inside this rectangle.
    pub fn contains(&self, other: &Rect) -> bool {
        other.x >= self.x && other.y >= self.y && other.right() <= self.right() && other.bottom() <= self.bottom()
    }

    /// Every coordinate multiplied by `factor`.
    pub fn scaled(&self, factor: usize) -> Rect {
        Rect { x: self.x * factor, y: self.y * factor, width: self.width * factor, height: self.height * factor }
    }
}
