//! One macro for the fieldless enums that cross the kernel/userspace boundary as integers
//! (event kinds, attach mechanisms, counter indexes, classic tracepoints): their `ALL` list,
//! `COUNT`, the conversion back from the integer and, where they have one, the name, all
//! generated from the single variant list, so that adding a variant cannot leave a table behind.

/// Declares `enum $name` with `#[repr($repr)]` and the discriminants given, and in its `impl`:
/// - `ALL`: every variant in declaration order, and `COUNT`, its length;
/// - `$from(raw: $repr) -> Option<Self>`: the variant of a discriminant, `None` for others;
/// - with `=> "label"` on every variant, `name(self) -> &'static str`.
macro_rules! enum_table {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ident, $from:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal, )+
        }
    ) => {
        enum_table! {
            $(#[$meta])*
            $vis enum $name: $repr, $from {
                $( $(#[$vmeta])* $variant = $value, )+
            }
        }

        impl $name {
            /// The name users see (command line, JSON, text output).
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $label, )+
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ident, $from:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// How many variants there are.
            pub const COUNT: usize = [$( stringify!($variant) ),+].len();

            /// Every variant, in declaration order.
            pub const ALL: [Self; Self::COUNT] = [$( Self::$variant ),+];

            /// The variant whose discriminant is `raw`, if any.
            pub const fn $from(raw: $repr) -> Option<Self> {
                match raw {
                    $( $value => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    enum_table! {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Sample: u8, from_u8 {
            One = 1 => "one",
            Three = 3 => "three",
        }
    }

    #[test]
    fn tables_follow_the_variant_list() {
        assert_eq!(Sample::COUNT, 2);
        assert_eq!(Sample::ALL, [Sample::One, Sample::Three]);
        assert_eq!(Sample::from_u8(3), Some(Sample::Three));
        assert_eq!(Sample::from_u8(2), None);
        assert_eq!(Sample::Three.name(), "three");
    }
}
