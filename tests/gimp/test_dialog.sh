#!/usr/bin/env bash
# The DPIR Restore dialog in GIMP's real window: gimp-3 on Xvfb (with a small window manager, so focus follows
# the active window) in the Debian forky chroot, driven with xdotool through the menus, the dialog and the
# progress bar as a user would. Called by tests/gimp/test_gimp.sh, which has built and installed the plug-in:
#
#   bash tests/gimp/test_dialog.sh CHROOT WORK      (WORK: test_gimp.sh's scratch folder inside CHROOT/tmp)
#
# Each case writes the plug-in's remembered values (what Re-Show brings back) before opening the dialog, and
# checks what the user sees: which windows open, whether the image is changed (its title's "*"), the values
# GIMP remembers afterwards, and that nothing is printed on the terminal. Screenshots of every step go to
# build/gimp-dialog/ (test artefacts, not committed).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$1
work=$2
in=/tmp/$(basename "$work")
shots=build/gimp-dialog
display=:77
py=build/venv/bin/python
last=$work/profile/plug-in-settings/GimpProcedureConfigRun-plug-in-dpir-restore.last
rm -rf "$shots" && mkdir -p "$shots" "$work/fb"

in_chroot() {
    unshare --mount --propagation private sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc" && mount -t tmpfs tmpfs "$root/dev/shm" &&
            exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"' sh "$root" "$@"
}
x() { in_chroot DISPLAY=$display xdotool "$@"; }
shot() { $py tests/gimp/check.py screenshot "$work/fb/Xvfb_screen0" "$shots/$1.png"; }
fail() { # on stderr, so that it shows from inside $(...) too
    shot failure || true
    {
        echo "  FAILED  $*"
        grep -v "Gdk-CRITICAL\|^$" "$work/gimp-ui.log" | tail -n 20 | sed 's/^/    /'
    } >&2
    exit 1
}
# The visible window whose title contains TEXT. A search fails outright when a window it lists is destroyed
# before it is read (a dialog closing): it is asked again, since the image window is always there to be found.
window() {
    in_chroot DISPLAY=$display sh -c 'for _ in 1 2 3 4 5 6 7 8 9 10; do
            ids=$(xdotool search --onlyvisible --name . 2>/dev/null) && break; sleep 0.1; done
        for w in $ids; do
            case "$(xdotool getwindowname "$w" 2>/dev/null)" in *"$1"*) echo "$w"; exit 0 ;; esac; done; exit 1' sh "$1"
}
wait_window() { # TEXT [SECONDS]: the window's id, once it shows
    for _ in $(seq $((${2:-30} * 5))); do window "$1" && return 0; sleep 0.2; done
    fail "no window titled \"$1\" appeared"
}
wait_closed() { # TEXT [SECONDS]
    for _ in $(seq $((${2:-30} * 5))); do window "$1" >/dev/null || return 0; sleep 0.2; done
    fail "the window titled \"$1\" stayed open"
}
image_title() { x getwindowname "$image"; }
plug_in_running() { pgrep -f "$in/profile/plug-ins/dpir-restore/dpir-restore" >/dev/null; }
remember() { # VALUES...: what GIMP remembers of the last run, one "(name value)" per argument
    { echo "# settings"; printf '%s\n' "$@"; echo "# end of settings"; } >"$last"
}
remembered() { grep -qxF -- "$1" "$last" || fail "GIMP does not remember $1: $(tr '\n' ' ' <"$last")"; }
remembered_model() { # FOLDER (GIMP writes a URI of its own form)
    grep -q "^(model \"file:/*${1#/}\")$" "$last" || fail "GIMP does not remember the model $1: $(grep model "$last")"
}

# Filters > Enhance > DPIR Restore..., with the mouse on the menu bar and the keyboard in the menus.
open_dialog() {
    x windowactivate --sync "$image"
    x mousemove "${filters_menu[@]}"
    sleep 0.3
    x click 1
    sleep 0.5
    x key --delay 150 Down Down Down Right i
    dialog=$(wait_window "DPIR Restore")
    x windowactivate --sync "$dialog"
    sleep 1
}
press() { x windowactivate --sync "$dialog" key "$1"; } # a key in the dialog

stop_gimp() { pkill -f "$in/" 2>/dev/null || true; pkill -f "matchbox-window-manager -display $display" || true; }
trap stop_gimp EXIT
in_chroot Xvfb $display -screen 0 1280x1000x24 -fbdir "$in/fb" -nolisten tcp >"$work/xvfb.log" 2>&1 &
sleep 1
in_chroot matchbox-window-manager -display $display -use_titlebar no >/dev/null 2>&1 &
echo "(show-welcome-dialog no)" >>"$work/profile/gimprc"
in_chroot HOME="$in/home" GIMP3_DIRECTORY="$in/profile" DISPLAY=$display DPIR_MODEL="$in/bundles/tiny" \
    gimp-3 --no-splash "$in/rgb.png" >"$work/gimp-ui.log" 2>&1 &
image=$(wait_window "[rgb]" 120) # the image window, GIMP's main window here
sleep 2
filters_menu=(426 12) # the Filters menu of the maximised image window
shot gimp

echo "== GIMP dialog: a model that fails brings the dialog back with the message and every value kept"
remember "(model \"file://$in/bundles/broken_nan\")" "(steps 3)" "(seed 77)"
open_dialog
shot broken-model
press alt+o
sleep 1
dialog=$(wait_window "DPIR Restore") # again, after the failure
shot failure-message
case "$(image_title)" in \**) fail "the image changed" ;; esac
press Escape # Cancel
wait_closed "DPIR Restore"
remembered_model "$in/bundles/broken_nan"
remembered "(steps 3)"
remembered "(seed 77)"
echo "  ok  the dialog came back after the failure; the image is unchanged; GIMP remembers the model, 3 steps, seed 77"

echo "== GIMP dialog: a folder that is no model is refused before OK"
remember "(model \"file://$in/bundles\")"
open_dialog
shot folder-of-models
press alt+o
sleep 2
window "DPIR Restore" >/dev/null || fail "OK ran with a folder that holds no model"
press Escape # Cancel
wait_closed "DPIR Restore"
echo "  ok  OK does nothing while the folder holds no dpir.json (the dialog names the models inside it)"

# A folder chosen last time that has since gone: GIMP drops it; the dialog names it above the default model that
# runs instead (the screenshot shows it; no assertion reads the dialog's text).
remember "(model \"file://$in/deleted-model\")" "(last-model \"$in/deleted-model\")"
open_dialog
shot deleted-model
press Escape # Cancel
wait_closed "DPIR Restore"

echo "== GIMP dialog: cancelled from the progress bar, quietly"
remember "(model \"file://$in/bundles/tiny\")" "(steps 1000)" "(tile-size 128)" "(tile-overlap 32)"
open_dialog
press alt+o
wait_closed "DPIR Restore"
sleep 3
plug_in_running || fail "the restore ended before it could be cancelled"
shot progress
before=$(wc -l <"$work/gimp-ui.log")
x mousemove 975 982 # the Cancel button beside the status bar's progress
sleep 0.3
x click 1
for _ in $(seq 50); do plug_in_running || break; sleep 0.2; done
plug_in_running && fail "the plug-in still runs after Cancel"
sleep 1
case "$(image_title)" in \**) fail "the image changed" ;; esac
printed=$(tail -n +$((before + 1)) "$work/gimp-ui.log" | grep -v "Gdk-CRITICAL\|^$" || true)
[ -z "$printed" ] || fail "cancelling printed: $printed"
echo "  ok  Cancel stopped the plug-in; the image is unchanged; nothing was printed"

echo "== GIMP dialog: the model's values, the preview, a restore"
rm -f "$last"
open_dialog
shot dialog
press alt+a
sleep 1
shot advanced
# The Preview toggle under the preview, at the top of the dialog's left column (its Alt+P does not reach it).
position=$(x getwindowgeometry "$dialog" | sed -n 's/ *Position: \([0-9]*\),\([0-9]*\).*/\1 \2/p')
x mousemove $(( ${position% *} + 34 )) $(( ${position#* } + 241 ))
sleep 0.3
x click 1
sleep 6
shot preview
$py tests/gimp/check.py changed "$shots/advanced.png" "$shots/preview.png" 20000 ||
    fail "ticking Preview did not show a restored preview"
press alt+o
wait_closed "DPIR Restore"
for _ in $(seq 150); do case "$(image_title)" in \**) break ;; esac; sleep 0.2; done
case "$(image_title)" in \**) ;; *) fail "the image was not restored" ;; esac
shot restored
for value in "(model NULL)" "(steps 28)" "(seed 1234)" "(guidance 1)" "(tile-size 1024)" "(tile-overlap 128)" \
    '(execution-provider "auto")'; do
    remembered "$value"
done
echo "  ok  the preview showed a restored part of the layer"
echo "  ok  restored with the tiny model's own values (28 steps, seed 1234, guidance 1, tiles of 1024 pixels" \
    "overlapping by 128), on the best provider available"
echo "  screenshots: $shots/"
