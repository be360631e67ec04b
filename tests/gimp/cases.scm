; Script-fu programs that tests/gimp/test_gimp.sh runs in gimp-console-3 (batch mode) against the DPIR Restore
; plug-in. Each takes the scratch folder DIR (as seen inside the chroot): inputs DIR/rgb.png and DIR/rgba.png,
; bundles in DIR/bundles/, results written to DIR/out/. tests/gimp/check.py compares the results; the selection
; rectangles and options here are repeated there.

(script-fu-use-v3)

; #t when (thunk) succeeds, else the error's message (a failed PDB call raises an error in script-fu).
(define (dpir-try thunk)
  (call/cc
    (lambda (return)
      (let ((saved *error-hook*))
        (set! *error-hook* (lambda args (set! *error-hook* saved) (return (car args))))
        (thunk)
        (set! *error-hook* saved)
        #t))))

(define (dpir-open dir name) (gimp-file-load RUN-NONINTERACTIVE (string-append dir "/" name)))
(define (dpir-layer image) (vector-ref (gimp-image-get-selected-layers image) 0))
(define (dpir-save image dir name) (gimp-file-save RUN-NONINTERACTIVE image (string-append dir "/out/" name) -1))
(define (dpir-done image dir name) (dpir-save image dir name) (gimp-image-delete image))

; The tiny bundle's options, the same as the CLI reference's: --steps 4 --seed 99 --tile-size 32 (latent samples,
; 256 pixels).
(define (dpir-restore-tiny dir image layer)
  (plug-in-dpir-restore #:run-mode RUN-NONINTERACTIVE #:image image #:drawables (vector layer)
                        #:model (string-append dir "/bundles/tiny") #:steps 4 #:seed 99 #:tile-size 256))

; The oracle bundle (its result is its input) from $DPIR_MODEL: no #:model argument.
(define (dpir-restore-oracle image layer)
  (plug-in-dpir-restore #:run-mode RUN-NONINTERACTIVE #:image image #:drawables (vector layer) #:steps 3))

(define (dpir-test-restore dir)
  ; Tiny bundle: the whole layer, a rectangle, a rectangle of a layer moved off the origin, a feathered ellipse.
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image)))
    (dpir-restore-tiny dir image layer)
    (dpir-done image dir "tiny-whole.png"))
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image)))
    (gimp-image-select-rectangle image CHANNEL-OP-REPLACE 150 90 170 120)
    (dpir-restore-tiny dir image layer)
    (dpir-done image dir "tiny-rect.png"))
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image)))
    (gimp-layer-set-offsets layer 37 21)
    (gimp-image-select-rectangle image CHANNEL-OP-REPLACE 100 80 150 100)
    (dpir-restore-tiny dir image layer)
    (gimp-layer-set-offsets layer 0 0)
    (dpir-done image dir "tiny-offset.png"))
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image)))
    (gimp-image-select-ellipse image CHANNEL-OP-REPLACE 120 60 200 180)
    (gimp-selection-feather image 20)
    (dpir-restore-tiny dir image layer)
    (dpir-done image dir "tiny-feather.png"))
  ; Oracle bundle: RGBA in joint tile mode, then 16-bit, linear float, perceptual half, gray and gray with alpha.
  (let* ((image (dpir-open dir "rgba.png")) (layer (dpir-layer image)))
    (gimp-image-select-rectangle image CHANNEL-OP-REPLACE 50 40 200 150)
    (plug-in-dpir-restore #:run-mode RUN-NONINTERACTIVE #:image image #:drawables (vector layer) #:steps 3
                          #:tile-mode "joint" #:tile-size 256 #:tile-overlap 64 #:context-margin 16
                          #:execution-provider "cpu")
    (dpir-done image dir "oracle-rgba-joint.png"))
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image)))
    (gimp-image-convert-precision image PRECISION-U16-NON-LINEAR)
    (dpir-restore-oracle image layer)
    (dpir-done image dir "oracle-u16.ppm"))
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image)))
    (gimp-image-convert-precision image PRECISION-FLOAT-LINEAR)
    (gimp-image-select-rectangle image CHANNEL-OP-REPLACE 20 30 300 200)
    (dpir-restore-oracle image layer)
    (gimp-image-convert-precision image PRECISION-U8-NON-LINEAR)
    (dpir-done image dir "oracle-float-linear.png"))
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image)))
    (gimp-image-convert-precision image PRECISION-HALF-PERCEPTUAL)
    (dpir-restore-oracle image layer)
    (gimp-image-convert-precision image PRECISION-U8-NON-LINEAR)
    (dpir-done image dir "oracle-half.png"))
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image)))
    (gimp-image-convert-grayscale image)
    (dpir-save image dir "gray-before.png")
    (gimp-image-select-rectangle image CHANNEL-OP-REPLACE 10 10 250 200)
    (dpir-restore-oracle image layer)
    (dpir-done image dir "gray-after.png"))
  (let* ((image (dpir-open dir "rgba.png")) (layer (dpir-layer image)))
    (gimp-image-convert-grayscale image)
    (dpir-save image dir "graya-before.png")
    (dpir-restore-oracle image layer)
    (dpir-done image dir "graya-after.png")))

; Runs (thunk), which must fail, prints its message, and saves the image: it must be unchanged.
(define (dpir-expect-failure dir image name thunk)
  (let ((result (dpir-try thunk)))
    (if (eq? result #t)
        (error (string-append name ": DPIR Restore succeeded where it must fail"))
        (gimp-message (string-append name " failed as expected: " result)))
    (dpir-save image dir name)))

; Errors, with no $DPIR_MODEL and the oracle bundle in the default location. Ends with an uncaught failure, so
; the batch exits non-zero.
(define (dpir-test-errors dir)
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image))
         (run (lambda args
                (lambda ()
                  (apply plug-in-dpir-restore
                         (append (list #:run-mode RUN-NONINTERACTIVE #:image image #:drawables (vector layer))
                                 args))))))
    ((run #:steps 3))
    (dpir-save image dir "default-model.png")
    (gimp-image-select-rectangle image CHANNEL-OP-REPLACE 30 30 100 100)
    (dpir-expect-failure dir image "missing-folder.png" (run #:model (string-append dir "/no-such-bundle")))
    (dpir-expect-failure dir image "not-a-bundle.png" (run #:model (string-append dir "/bundles")))
    (dpir-expect-failure dir image "broken-bundle.png" (run #:model (string-append dir "/bundles/broken_nan")))
    (dpir-expect-failure dir image "bad-option.png" (run #:guidance 0.5))
    (let* ((big (gimp-image-new 70000 8 RGB))
           (big-layer (gimp-layer-new big "big" 70000 8 RGB-IMAGE 100 LAYER-MODE-NORMAL)))
      (gimp-image-insert-layer big big-layer 0 0)
      (dpir-expect-failure dir image "too-large.png"
        (lambda () (plug-in-dpir-restore #:run-mode RUN-NONINTERACTIVE #:image big #:drawables (vector big-layer))))
      (gimp-image-delete big))
    ((run #:model (string-append dir "/bundles")))))

; Without ONNX Runtime and without any model: both are reported. Ends with an uncaught failure.
(define (dpir-test-missing dir)
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image)))
    (dpir-expect-failure dir image "no-model.png"
      (lambda () (plug-in-dpir-restore #:run-mode RUN-NONINTERACTIVE #:image image #:drawables (vector layer))))
    (dpir-expect-failure dir image "no-onnxruntime.png"
      (lambda () (plug-in-dpir-restore #:run-mode RUN-NONINTERACTIVE #:image image #:drawables (vector layer)
                                       #:model (string-append dir "/bundles/oracle"))))
    (plug-in-dpir-restore #:run-mode RUN-NONINTERACTIVE #:image image #:drawables (vector layer)
                          #:model (string-append dir "/bundles/oracle"))))

; A long restore that the test kills midway, as GIMP's progress cancel does: the layer must be unchanged.
(define (dpir-test-cancel dir)
  (let* ((image (dpir-open dir "rgb.png")) (layer (dpir-layer image)))
    (dpir-expect-failure dir image "cancel.png"
      (lambda () (plug-in-dpir-restore #:run-mode RUN-NONINTERACTIVE #:image image #:drawables (vector layer)
                                       #:model (string-append dir "/bundles/tiny") #:steps 1000
                                       #:tile-size 256)))
    (gimp-image-delete image)))
